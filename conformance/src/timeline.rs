//! A self-contained HTML timeline of a history, in the spirit of Porcupine's
//! visualizer: one row per client process, each operation a bar from its
//! invocation to its completion, faults as vertical lines. When the checker
//! found a violation, the offending key's operations are highlighted (the
//! rest is dimmed) and the counterexample's operations are outlined in red.
//! No external files, fonts or scripts: open it from disk.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use crate::checker::{Report, Verdict};
use crate::history::{History, OpKind, OpStatus, Operation};

const ROW_HEIGHT: f64 = 22.0;
const BAR_HEIGHT: f64 = 16.0;
const LABEL_WIDTH: f64 = 230.0;
const TOP: f64 = 40.0;
/// Timeline width per second of history, at zoom 1.
const PIXELS_PER_SECOND: f64 = 200.0;

fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            other => escaped.push(other),
        }
    }
    escaped
}

fn millis(us: u64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

fn tooltip(operation: &Operation) -> String {
    let mut text = format!(
        "#{} {}\nclient: {}\nnode: {}\nstatus: {:?}\ninvoke: {}\ncomplete: {}",
        operation.id,
        operation.describe(),
        operation.client,
        operation.node,
        operation.status,
        millis(operation.invoke_us),
        millis(operation.complete_us),
    );
    if let Some(served) = &operation.served {
        let _ = write!(
            text,
            "\nserved by node {} (leader {}, term {}, index {}, revision {}{})",
            served.node_id,
            served.leader_id,
            served.term,
            served.index,
            served.revision,
            if served.forwarded_by != 0 {
                format!(", forwarded by {}", served.forwarded_by)
            } else {
                String::new()
            }
        );
    }
    if let Some(error) = &operation.error {
        let _ = write!(text, "\nerror: {error}");
    }
    text
}

/// Renders the timeline page.
pub fn render(history: &History, report: &Report) -> String {
    let end_us = history
        .operations
        .iter()
        .map(|operation| operation.complete_us)
        .chain(history.events.iter().map(|event| event.at_us))
        .max()
        .unwrap_or(0)
        + 100_000;
    let width = (end_us as f64 / 1e6 * PIXELS_PER_SECOND).max(800.0);
    let x = |us: u64| LABEL_WIDTH + us as f64 / end_us as f64 * width;

    // Rows: one per process, labelled with its client.
    let mut rows: BTreeMap<usize, String> = BTreeMap::new();
    for operation in &history.operations {
        rows.entry(operation.process)
            .or_insert_with(|| operation.client.clone());
    }
    let row_of: BTreeMap<usize, usize> = rows
        .keys()
        .enumerate()
        .map(|(row, &process)| (process, row))
        .collect();
    let height = TOP + rows.len() as f64 * ROW_HEIGHT + 30.0;

    let violation = report.violation.as_ref();
    let highlight_key = violation.map(|violation| violation.key.as_str());
    let counterexample: BTreeSet<usize> = violation
        .map(|violation| violation.counterexample.iter().copied().collect())
        .unwrap_or_default();
    let keys: BTreeSet<&str> = history
        .operations
        .iter()
        .map(|operation| operation.key.as_str())
        .collect();

    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg id="timeline" xmlns="http://www.w3.org/2000/svg" width="{w:.0}" height="{height:.0}" viewBox="0 0 {w:.0} {height:.0}">"#,
        w = LABEL_WIDTH + width + 20.0
    );
    // Row stripes and labels (labels are drawn last, over the bars).
    for row in 0..rows.len() {
        let _ = write!(
            svg,
            r#"<rect class="stripe{odd}" x="0" y="{y:.0}" width="{w:.0}" height="{ROW_HEIGHT}"/>"#,
            odd = if row % 2 == 1 { " odd" } else { "" },
            y = TOP + row as f64 * ROW_HEIGHT,
            w = LABEL_WIDTH + width + 20.0,
        );
    }
    svg.push_str(r#"<g id="ticks"></g>"#);
    // Operations.
    for operation in &history.operations {
        let row = row_of[&operation.process];
        let y = TOP + row as f64 * ROW_HEIGHT + (ROW_HEIGHT - BAR_HEIGHT) / 2.0;
        // An unknown write may take effect until the end: draw it to the end.
        let pending_write = operation.status == OpStatus::Unknown && operation.kind != OpKind::Get;
        let end = if pending_write {
            end_us
        } else {
            operation.complete_us
        };
        let (start_x, end_x) = (x(operation.invoke_us), x(end));
        let mut classes = vec![
            match operation.status {
                OpStatus::Ok => "ok",
                OpStatus::Failed => "failed",
                OpStatus::Unknown => "unknown",
            },
            match operation.kind {
                OpKind::Put => "put",
                OpKind::Get => "get",
                OpKind::Delete => "delete",
                OpKind::Cas => "cas",
                OpKind::Increment => "increment",
                OpKind::Transfer => "transfer",
                OpKind::Audit => "audit",
                OpKind::Range => "range",
                OpKind::Fenced => "fenced",
                OpKind::LeaseGrant | OpKind::LeaseKeepAlive | OpKind::LeaseRevoke => "lease",
            },
        ];
        if highlight_key.is_some_and(|key| key != operation.key) {
            classes.push("dim");
        }
        if counterexample.contains(&operation.id) {
            classes.push("culprit");
        }
        let _ = write!(
            svg,
            r#"<g class="op {classes}" data-key="{key}" data-t0="{t0}" data-t1="{end}"><rect x="{start_x:.1}" y="{y:.1}" width="{bar:.1}" height="{BAR_HEIGHT}" rx="2"/><text class="label" x="{tx:.1}" y="{ty:.1}">{label}</text><title>{title}</title></g>"#,
            classes = classes.join(" "),
            key = escape(&operation.key),
            t0 = operation.invoke_us,
            bar = (end_x - start_x).max(2.0),
            tx = start_x + 3.0,
            ty = y + 12.0,
            label = escape(&short_label(operation)),
            title = escape(&tooltip(operation)),
        );
    }
    // Faults (red, labelled) and steps (grey ticks; hover for the text).
    let mut fault_index = 0;
    for event in &history.events {
        let is_step = event.text.starts_with("step ");
        let label_y = 10.0 + (fault_index % 3) as f64 * 10.0;
        if !is_step {
            fault_index += 1;
        }
        let _ = write!(
            svg,
            r#"<g class="event {kind}" data-t0="{t0}"><line x1="{x:.1}" y1="{top:.0}" x2="{x:.1}" y2="{bottom:.0}"/>{label}<title>{title}</title></g>"#,
            kind = if is_step { "step" } else { "fault" },
            t0 = event.at_us,
            x = x(event.at_us),
            top = if is_step { TOP - 6.0 } else { 2.0 },
            bottom = height - 20.0,
            label = if is_step {
                String::new()
            } else {
                format!(
                    r#"<text x="{:.1}" y="{label_y:.0}">{}</text>"#,
                    x(event.at_us) + 2.0,
                    escape(&event.text)
                )
            },
            title = escape(&format!("{} at {}", event.text, millis(event.at_us))),
        );
    }
    for (row, (process, client)) in rows.iter().enumerate() {
        let _ = write!(
            svg,
            r#"<g class="rowlabel"><rect x="0" y="{y:.0}" width="{LABEL_WIDTH}" height="{ROW_HEIGHT}"/><text x="6" y="{ty:.0}">{label}</text></g>"#,
            y = TOP + row as f64 * ROW_HEIGHT,
            ty = TOP + row as f64 * ROW_HEIGHT + 15.0,
            label = escape(&format!("{client} [p{process}]")),
        );
    }
    svg.push_str("</svg>");

    let (ok, failed, unknown) = history.counts();
    let verdict = match report.verdict {
        Verdict::Linearizable => "linearizable".to_string(),
        Verdict::NotLinearizable => format!(
            "NOT linearizable (keys: {})",
            report.violating_keys.join(", ")
        ),
        Verdict::Inconclusive => format!(
            "inconclusive (gave up on keys: {})",
            report.inconclusive_keys.join(", ")
        ),
    };
    let mut summary = String::new();
    let mut window = (0, 0);
    if let Some(violation) = violation {
        let by_id: BTreeMap<usize, &Operation> = history
            .operations
            .iter()
            .map(|operation| (operation.id, operation))
            .collect();
        let ops: Vec<&Operation> = violation
            .counterexample
            .iter()
            .filter_map(|id| by_id.get(id).copied())
            .collect();
        window = (
            ops.iter().map(|op| op.invoke_us).min().unwrap_or(0),
            ops.iter().map(|op| op.complete_us).max().unwrap_or(0),
        );
        let _ = write!(
            summary,
            "<h2>Counterexample on key <code>{}</code> <button id=\"focus\">zoom to it</button></h2>\
             <p>These operations on their own have no linearization{}: no order of them that respects real time \
             (an operation that completed before another was invoked comes first) is a valid sequence for one register. \
             Linearized before getting stuck: {}. Could not be linearized next: {}.</p>\
             <table><tr><th>op</th><th>client</th><th>node</th><th>invoke</th><th>complete</th><th>operation</th></tr>",
            escape(&violation.key),
            if violation.minimal { " (1-minimal)" } else { " (shrinking ran out of time)" },
            id_list(&violation.longest),
            id_list(&violation.stuck),
        );
        for operation in ops {
            let id = operation.id;
            let relaxed = if violation.relaxed.contains(&id) {
                " (answer ignored)"
            } else {
                ""
            };
            let _ = write!(
                summary,
                "<tr class=\"{status}\"><td>#{id}</td><td>{client}</td><td>{node}</td><td>{invoke}</td><td>{complete}</td><td>{op}{relaxed}</td></tr>",
                status = format!("{:?}", operation.status).to_lowercase(),
                client = escape(&operation.client),
                node = operation.node,
                invoke = millis(operation.invoke_us),
                complete = if operation.status == OpStatus::Unknown && operation.kind != OpKind::Get {
                    "(unknown)".to_string()
                } else {
                    millis(operation.complete_us)
                },
                op = escape(&operation.describe()),
            );
        }
        summary.push_str("</table>");
    }
    let mut options = String::from("<option value=\"\">all keys</option>");
    for key in &keys {
        let selected = if Some(*key) == highlight_key {
            " selected"
        } else {
            ""
        };
        let _ = write!(
            options,
            "<option value=\"{k}\"{selected}>{k}</option>",
            k = escape(key)
        );
    }

    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 13px/1.4 system-ui, sans-serif; margin: 16px; color: #222; }}
h1 {{ font-size: 18px; margin: 0 0 4px; }} h2 {{ font-size: 15px; }}
.verdict {{ font-weight: bold; color: {verdict_color}; }}
#scroll {{ overflow-x: auto; border: 1px solid #ccc; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ddd; padding: 2px 6px; text-align: left; }}
tr.unknown td {{ background: #fff3e0; }} tr.failed td {{ color: #888; }}
.stripe {{ fill: #fff; }} .stripe.odd {{ fill: #f6f6f6; }}
.rowlabel rect {{ fill: #fafafa; stroke: #ddd; }} .rowlabel text {{ font-size: 11px; fill: #444; }}
.tick line {{ stroke: #e4e4e4; }} .tick text {{ font-size: 10px; fill: #666; }}
.op rect {{ stroke: #333; stroke-width: 0.5; }}
.op.ok.put rect {{ fill: #90caf9; }} .op.ok.get rect {{ fill: #a5d6a7; }} .op.ok.delete rect {{ fill: #ce93d8; }}
.op.failed rect {{ fill: #e0e0e0; stroke: #aaa; }}
.op.unknown rect {{ fill: #ffcc80; stroke-dasharray: 3 2; }}
.op.dim {{ opacity: 0.15; }} .op.hidden {{ display: none; }}
.op.culprit rect {{ stroke: #d50000; stroke-width: 2.5; }}
.label {{ font-size: 10px; fill: #111; pointer-events: none; }}
.event.fault line {{ stroke: #d50000; stroke-dasharray: 4 3; }} .event.fault text {{ font-size: 10px; fill: #b71c1c; }}
.event.step line {{ stroke: #9e9e9e; stroke-dasharray: 1 3; }}
.legend span {{ display: inline-block; padding: 0 6px; margin-right: 6px; border: 1px solid #333; }}
</style></head><body>
<h1>{title}</h1>
<p>Seed {seed}. {total} operations: {ok} ok, {failed} failed (surely not done), {unknown} unknown (may have happened). Verdict: <span class="verdict">{verdict}</span></p>
<p class="legend"><span style="background:#90caf9">put</span><span style="background:#a5d6a7">get</span><span style="background:#ce93d8">delete</span><span style="background:#e0e0e0">failed</span><span style="background:#ffcc80">unknown (a write: may take effect until the end)</span><span style="border:2.5px solid #d50000">in the counterexample</span> red dashed lines: faults; grey dotted: scenario steps. Rows: client processes (a client that saw an unknown outcome goes on as a new process). Hover a bar or line for details.</p>
<p>Key: <select id="key">{options}</select> <label><input type="checkbox" id="only"> hide other keys</label>
Zoom: <input type="range" id="zoom" min="0" max="14" step="0.25" value="0"> <span id="zoomText">1x</span></p>
{summary}
<div id="scroll">{svg}</div>
<script>
(function () {{
  var END = {end_us}, LABEL = {label_width}, BASE = {width:.1}, HEIGHT = {height:.0};
  var WINDOW = [{window_start}, {window_end}];
  var NS = 'http://www.w3.org/2000/svg';
  var svg = document.getElementById('timeline'), scroll = document.getElementById('scroll');
  var key = document.getElementById('key'), only = document.getElementById('only');
  var zoomInput = document.getElementById('zoom'), zoomText = document.getElementById('zoomText');
  function X(t, z) {{ return LABEL + t / END * BASE * z; }}
  function layout(z) {{
    var w = LABEL + BASE * z + 20;
    svg.setAttribute('width', w); svg.setAttribute('viewBox', '0 0 ' + w + ' ' + HEIGHT);
    var stripes = svg.querySelectorAll('.stripe');
    for (var i = 0; i < stripes.length; i++) stripes[i].setAttribute('width', w);
    var ops = svg.querySelectorAll('.op');
    for (i = 0; i < ops.length; i++) {{
      var g = ops[i], x0 = X(+g.getAttribute('data-t0'), z), x1 = X(+g.getAttribute('data-t1'), z);
      var rect = g.querySelector('rect'), text = g.querySelector('text');
      rect.setAttribute('x', x0); rect.setAttribute('width', Math.max(2, x1 - x0));
      text.setAttribute('x', x0 + 3);
      text.style.display = (x1 - x0) > text.textContent.length * 6 + 4 ? '' : 'none';
    }}
    var events = svg.querySelectorAll('.event');
    for (i = 0; i < events.length; i++) {{
      var x = X(+events[i].getAttribute('data-t0'), z), line = events[i].querySelector('line');
      line.setAttribute('x1', x); line.setAttribute('x2', x);
      var label = events[i].querySelector('text'); if (label) label.setAttribute('x', x + 2);
    }}
    var ticks = document.getElementById('ticks'); while (ticks.firstChild) ticks.removeChild(ticks.firstChild);
    var steps = [1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5, 1e6, 2e6, 5e6, 1e7], step = steps[steps.length - 1];
    for (i = 0; i < steps.length; i++) if (steps[i] / END * BASE * z >= 90) {{ step = steps[i]; break; }}
    for (var t = 0; t <= END; t += step) {{
      var tick = document.createElementNS(NS, 'g'); tick.setAttribute('class', 'tick');
      var l = document.createElementNS(NS, 'line'), tx = document.createElementNS(NS, 'text'), xt = X(t, z);
      l.setAttribute('x1', xt); l.setAttribute('x2', xt); l.setAttribute('y1', {top:.0} - 8); l.setAttribute('y2', HEIGHT - 20);
      tx.setAttribute('x', xt); tx.setAttribute('y', HEIGHT - 6);
      tx.textContent = step < 1e6 ? (t / 1000).toFixed(step < 1e4 ? 1 : 0) + ' ms' : (t / 1e6).toFixed(step < 1e6 ? 1 : 0) + ' s';
      tick.appendChild(l); tick.appendChild(tx); ticks.appendChild(tick);
    }}
    zoomText.textContent = (z < 10 ? z.toFixed(1) : Math.round(z)) + 'x';
  }}
  function filter() {{
    var ops = svg.querySelectorAll('.op');
    for (var i = 0; i < ops.length; i++) {{
      var match = !key.value || ops[i].getAttribute('data-key') === key.value;
      ops[i].classList.toggle('dim', !match && !only.checked);
      ops[i].classList.toggle('hidden', !match && only.checked);
    }}
  }}
  function zoomTo(z, t) {{
    z = Math.max(1, Math.min(16384, z));
    zoomInput.value = Math.log(z) / Math.LN2;
    layout(z);
    if (t !== undefined) scroll.scrollLeft = X(t, z) - LABEL - 40;
    stick();
  }}
  // Row labels stay at the left edge while the timeline scrolls.
  function stick() {{
    var labels = svg.querySelectorAll('.rowlabel');
    for (var i = 0; i < labels.length; i++) labels[i].setAttribute('transform', 'translate(' + scroll.scrollLeft + ',0)');
  }}
  scroll.addEventListener('scroll', stick);
  key.addEventListener('change', filter); only.addEventListener('change', filter);
  zoomInput.addEventListener('input', function () {{
    var before = (scroll.scrollLeft + scroll.clientWidth / 2 - LABEL) / (svg.getAttribute('width') - LABEL - 20) * END;
    var z = Math.pow(2, +zoomInput.value); layout(z);
    scroll.scrollLeft = X(before, z) - scroll.clientWidth / 2;
  }});
  function focus() {{
    var span = Math.max(WINDOW[1] - WINDOW[0], 1000);
    zoomTo((scroll.clientWidth - LABEL - 80) / (span / END * BASE), WINDOW[0]);
  }}
  var button = document.getElementById('focus');
  if (button) {{ button.addEventListener('click', focus); focus(); }} else {{ layout(1); }}
}})();
</script>
</body></html>
"#,
        title = escape(&format!("kvstore conformance: {}", history.scenario)),
        seed = history.seed,
        total = history.operations.len(),
        verdict = escape(&verdict),
        verdict_color = if report.verdict == Verdict::Linearizable {
            "#2e7d32"
        } else {
            "#c62828"
        },
        label_width = LABEL_WIDTH,
        top = TOP,
        window_start = window.0,
        window_end = window.1,
    )
}

fn id_list(ids: &[usize]) -> String {
    if ids.is_empty() {
        return "none".into();
    }
    ids.iter()
        .map(|id| format!("#{id}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn short_label(operation: &Operation) -> String {
    match (operation.kind, &operation.read, operation.deleted) {
        (OpKind::Put, _, _) => format!(
            "{}={}",
            operation.key,
            operation.value.as_deref().unwrap_or("")
        ),
        (OpKind::Get, Some(Some(value)), _) => format!("{}→{value}", operation.key),
        (OpKind::Get, Some(None), _) => format!("{}→∅", operation.key),
        (OpKind::Get, None, _) => format!("get {}", operation.key),
        (OpKind::Delete, _, Some(deleted)) => format!("del {}→{deleted}", operation.key),
        (OpKind::Delete, _, None) => format!("del {}", operation.key),
        (OpKind::Cas, _, _) => format!(
            "{}:{}={}{}",
            operation.key,
            match &operation.expected {
                Some(Some(expected)) => expected.as_str(),
                _ => "∅",
            },
            operation.value.as_deref().unwrap_or(""),
            match operation.swapped {
                Some(true) => " ✓",
                Some(false) => " ✗",
                None => "",
            }
        ),
        (
            OpKind::Increment
            | OpKind::Transfer
            | OpKind::Audit
            | OpKind::Range
            | OpKind::Fenced
            | OpKind::LeaseGrant
            | OpKind::LeaseKeepAlive
            | OpKind::LeaseRevoke,
            _,
            _,
        ) => operation.describe(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::{check, Limits};
    use crate::history::{Consistency, Event};

    fn operation(
        id: usize,
        key: &str,
        kind: OpKind,
        times: (u64, u64),
        status: OpStatus,
    ) -> Operation {
        Operation {
            id,
            client: format!("client <{id}>"),
            process: id % 2,
            node: 1,
            kind,
            key: key.into(),
            value: (kind == OpKind::Put).then(|| format!("v{id}")),
            consistency: (kind == OpKind::Get).then_some(Consistency::Linearizable),
            invoke_us: times.0,
            complete_us: times.1,
            status,
            read: None,
            deleted: None,
            expected: None,
            swapped: None,
            served: None,
            error: None,
        }
    }

    #[test]
    fn renders_a_violation_self_contained() {
        let mut stale = operation(2, "a", OpKind::Get, (400_000, 500_000), OpStatus::Ok);
        stale.read = Some(Some("v0".into()));
        let history = History {
            scenario: "demo".into(),
            seed: 3,
            operations: vec![
                operation(0, "a", OpKind::Put, (0, 100_000), OpStatus::Ok),
                operation(1, "a", OpKind::Put, (200_000, 300_000), OpStatus::Ok),
                stale,
                operation(3, "b", OpKind::Put, (0, 900_000), OpStatus::Unknown),
            ],
            events: vec![Event {
                at_us: 150_000,
                text: "kill node 1 (leader)".into(),
            }],
            watch_events: Vec::new(),
        };
        let report = check(&history, Limits::default());
        let page = render(&history, &report);
        assert!(page.starts_with("<!doctype html>"));
        assert!(page.contains("NOT linearizable"));
        assert!(page.contains("Counterexample on key <code>a</code>"));
        assert!(page.contains("class=\"op ok get culprit\""));
        assert!(page.contains("class=\"op unknown put dim\""));
        assert!(page.contains("client &lt;2&gt;"));
        assert!(page.contains("kill node 1 (leader)"));
        // Self-contained: nothing is loaded from elsewhere.
        assert!(!page.contains("src=\"http"));
        assert!(!page.contains("href=\"http"));
    }
}
