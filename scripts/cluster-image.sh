#!/usr/bin/env bash
# Build the kvstore image FROM scratch out of the release binaries: nothing is
# pulled. Called by `make image` after the release build.
#   scripts/cluster-image.sh IMAGE
# env: STRIP=1|0 (see cluster-rootfs.sh), CLUSTER_IMAGE_DIR (target/docker-image),
#      CARGO_TARGET_DIR (where the release binaries are, as cargo's; target/)
set -euo pipefail

here=$(cd "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
image=${1:?usage: $0 IMAGE}
context=${CLUSTER_IMAGE_DIR:-$root/target/docker-image}
target_dir=${CARGO_TARGET_DIR:-target}
[[ $target_dir == /* ]] || target_dir=$root/$target_dir
server=$target_dir/release/kvstore-server
cli=$target_dir/release/kvstore-cli

command -v docker >/dev/null || { echo "error: docker not found; 'make cluster-local' runs the cluster without docker" >&2; exit 1; }

"$here/cluster-rootfs.sh" "$context" "$server" "$cli"

version=$("$server" --version | awk '{ print $2 }')
revision=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
previous=$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)

# The context is the staged directory only (a few MB), not the repository.
docker build --quiet -f "$root/docker/Dockerfile" -t "$image" \
    --build-arg VERSION="$version" --build-arg REVISION="$revision" "$context" >/dev/null

current=$(docker image inspect -f '{{.Id}}' "$image")
if [ -n "$previous" ] && [ "$previous" != "$current" ]; then
    # Drop the image this tag replaced, unless a container still uses it.
    docker rmi "$previous" >/dev/null 2>&1 || true
fi

# The image must really run: no missing library, no missing loader.
echo "docker run --rm $image --version: $(docker run --rm "$image" --version)"
docker image ls "$image" --format 'built {{.Repository}}:{{.Tag}}  {{.ID}}  {{.Size}}'
