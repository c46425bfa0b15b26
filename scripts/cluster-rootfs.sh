#!/usr/bin/env bash
# Stage the root filesystem of the kvstore image: the release binaries plus
# exactly the shared libraries `ldd` reports for them, copied under their own
# paths (symlinks followed), so the image can be built `FROM scratch` without
# pulling any base image.
#
# usage: scripts/cluster-rootfs.sh OUT_DIR BINARY...
#   OUT_DIR is emptied and refilled: OUT_DIR/rootfs/ is the image's `/`.
#   Each BINARY goes to /usr/local/bin/<its name>.
# env:
#   STRIP=1  strip debug info from the copied binaries (default 1; the
#            binaries in target/ are never touched). STRIP=0 keeps the line
#            tables for file:line backtraces, at ~4x the size.
set -euo pipefail

die() { echo "cluster-rootfs: $*" >&2; exit 1; }

[ $# -ge 2 ] || die "usage: $0 OUT_DIR BINARY..."
out=$1
shift
strip_debug=${STRIP:-1}

[ "$(uname -s)" = Linux ] || die "the image is staged from Linux binaries and their libraries; this host is $(uname -s) (use 'make cluster-local' instead)"
command -v ldd >/dev/null || die "ldd not found (it comes with the C library: libc-bin / glibc-common)"

for bin in "$@"; do
    [ -x "$bin" ] || die "$bin is missing or not executable (build it first: cargo build --release --workspace --bins)"
done

# Refuse to wipe something that is not ours.
case "$out" in
    "" | / | . | ..) die "refusing to use '$out' as the output directory" ;;
esac
rm -rf -- "$out"
rootfs=$out/rootfs
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc" "$rootfs/data" "$rootfs/tmp"
chmod 1777 "$rootfs/tmp"

# Lists the absolute paths of the libraries (and the program interpreter) a
# binary loads. ldd prints e.g.
#   libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)
#   /lib64/ld-linux-x86-64.so.2 (0x...)
#   linux-vdso.so.1 (0x...)            <- in the kernel, no file
#   libfoo.so => not found             <- fatal
libraries_of() {
    local bin=$1 report
    if ! report=$(LC_ALL=C ldd "$bin" 2>&1); then
        # A static binary needs nothing ("not a dynamic executable").
        case "$report" in
            *"not a dynamic executable"* | *"statically linked"*) return 0 ;;
            *) die "ldd $bin failed: $report" ;;
        esac
    fi
    case "$report" in
        *"statically linked"*) return 0 ;;
        *"not found"*) die "ldd $bin: a library is missing:"$'\n'"$report" ;;
    esac
    awk '
        $2 == "=>" && $3 ~ /^\// { print $3; next }
        $1 ~ /^\// { print $1 }
    ' <<<"$report"
}

declare -A libraries=()
for bin in "$@"; do
    name=$(basename -- "$bin")
    if [ "$strip_debug" = 1 ] && command -v strip >/dev/null; then
        strip --strip-debug -o "$rootfs/usr/local/bin/$name" "$bin"
    else
        cp -- "$bin" "$rootfs/usr/local/bin/$name"
    fi
    chmod 0755 "$rootfs/usr/local/bin/$name"
    while IFS= read -r library; do
        [ -n "$library" ] && libraries[$library]=1
    done < <(libraries_of "$bin")
done

for library in "${!libraries[@]}"; do
    mkdir -p "$rootfs$(dirname -- "$library")"
    # -L: copy the file a symlink points to, under the name the loader asks for.
    cp -L -- "$library" "$rootfs$library"
done

# glibc >= 2.34 has the files and dns NSS modules built in; say explicitly
# that names resolve from /etc/hosts, then DNS (docker's embedded DNS serves
# the compose service names). Docker bind-mounts /etc/hosts, /etc/resolv.conf
# and /etc/hostname into every container, so nothing else is needed.
printf 'hosts: files dns\n' >"$rootfs/etc/nsswitch.conf"

echo "staged $rootfs:"
(cd "$rootfs" && find . -type f | sort | while IFS= read -r file; do
    printf '  %-40s %10s bytes\n' "${file#.}" "$(wc -c <"$file" | tr -d ' ')"
done)
du -sh "$rootfs" | awk '{print "  total " $1}'
