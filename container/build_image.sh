#!/usr/bin/env bash
# Build the Bento and its OCI image, and save the image as an archive.
#
#   container/build_image.sh [--output-dir DIR] [--no-save]
#
# 1. `bentoml build` from bentofile.yaml, with the models of BENTOML_HOME's store (train
#    them first: `make train`), labelled with the git revision; prints the Bento tag.
# 2. The image, from the Dockerfile that `bentoml build` generated:
#    - where a Docker daemon answers (`docker info`): `bentoml containerize` with Docker;
#    - otherwise (no daemon, no registry; needs root): `buildah build --pull=never` of the
#      unmodified generated Dockerfile on the exported Bento (models included), FROM a local
#      stand-in of the base image that container/build_base_image.sh builds once with
#      debootstrap (see that script).
#    The image is tagged <repository>:<Bento version> and <repository>:latest.
# 3. Saves the image to DIR/<name>-<version>.oci.tar (`podman save --format oci-archive`,
#    or `docker save`), unless --no-save, and writes DIR/build.json with the Bento tag,
#    image name and id, sizes and build times, which it also prints.
#
# Environment: PYTHON (default .venv/bin/python), BENTOML_HOME (the model and Bento store),
# IMAGE_REPOSITORY (default tabular-model-server; the tests use another),
# CONTAINER_BACKEND=docker|buildah to force a backend.
# Older archives of the same repository in DIR are deleted; old image tags are kept
# (`podman image prune` / `podman rmi` to reclaim them).
set -euo pipefail
# shellcheck source=container/common.sh
source "$(dirname "$0")/common.sh"

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
BENTOML="$(dirname "$PYTHON")/bentoml"
IMAGE_REPOSITORY="${IMAGE_REPOSITORY:-tabular-model-server}"
OUTPUT_DIR="$ROOT/dist"
SAVE=1
while (($#)); do
    case "$1" in
    --output-dir) OUTPUT_DIR="$2"; shift 2 ;;
    --no-save) SAVE=0; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
export BENTOML_DO_NOT_TRACK=True

log() { printf '[build_image] %s\n' "$*" >&2; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

t0=$(now)

# The Bento's Python packages are container/requirements-serving.txt, the serving subset
# of requirements.lock (make lock; tests/test_serving_requirements.py keeps it current).

# The commit, with -dirty when what the Bento packs differs from it (untracked files too).
revision=unknown
if git rev-parse --git-dir >/dev/null 2>&1; then
    revision=$(git rev-parse HEAD)
    packed=(bentofile.yaml service.py configuration.yaml model_server container/requirements-serving.txt)
    [[ -z "$(git status --porcelain -- "${packed[@]}")" ]] || revision="$revision-dirty"
fi

log "bentoml build (git revision $revision)"
build_out=$("$BENTOML" build -o tag --label "git_revision=$revision")
bento_tag=$(printf '%s\n' "$build_out" | sed -n 's/^__tag__://p' | tail -n 1)
if [[ -z "$bento_tag" ]]; then
    printf '%s\n' "$build_out" >&2
    log "bentoml build printed no tag"
    exit 1
fi
bento_version=${bento_tag#*:}
echo "bento: $bento_tag"
t_bento=$(now)

backend="${CONTAINER_BACKEND:-}"
if [[ -z "$backend" ]]; then
    if command -v docker >/dev/null && docker info >/dev/null 2>&1; then backend=docker; else backend=buildah; fi
fi
labels=(
    "org.opencontainers.image.revision=$revision"
    "org.opencontainers.image.version=$bento_version"
    "org.opencontainers.image.title=$IMAGE_REPOSITORY"
    "bentoml.bento=$bento_tag"
)
mkdir -p "$OUTPUT_DIR"
archive=""
if ((SAVE)); then # the previous archives of this repository (<repository>-<version>[.oci].tar)
    find "$OUTPUT_DIR" -maxdepth 1 -regextype posix-extended \
        -regex ".*/$IMAGE_REPOSITORY-[a-z0-9]+(\.oci)?\.tar" -delete
fi

if [[ "$backend" == docker ]]; then
    image="$IMAGE_REPOSITORY:$bento_version"
    latest="$IMAGE_REPOSITORY:latest"
    log "bentoml containerize --backend docker -> $image"
    label_options=()
    for label in "${labels[@]}"; do label_options+=(--opt "label=$label"); done
    "$BENTOML" containerize --backend docker -t "$image" "${label_options[@]}" "$bento_tag" >&2
    docker tag "$image" "$latest"
    t_image=$(now)
    image_id=$(docker image inspect --format '{{.Id}}' "$image")
    image_size=$(docker image inspect --format '{{.Size}}' "$image")
    exposed=$(docker image inspect --format '{{json .Config.ExposedPorts}}' "$image")
    if ((SAVE)); then
        archive="$OUTPUT_DIR/$IMAGE_REPOSITORY-$bento_version.tar"
        docker save -o "$archive" "$image"
    fi
else
    image="localhost/$IMAGE_REPOSITORY:$bento_version"
    latest="localhost/$IMAGE_REPOSITORY:latest"
    context=$(mktemp -d "${TMPDIR:-/tmp}/bento-context.XXXXXX")
    trap 'rm -rf "$context"' EXIT
    # The exported Bento is the build context `bentoml containerize` would use: the Bento
    # with its models under models/, and the Dockerfile `bentoml build` generated.
    "$BENTOML" export "$bento_tag" "$context/bento.tar" >/dev/null
    tar -C "$context" -xf "$context/bento.tar"
    rm "$context/bento.tar"
    base_image=$(sed -n 's/^FROM \([^ ]*\).*/\1/p' "$context/env/docker/Dockerfile" | head -n 1)
    bash container/build_base_image.sh "$base_image"
    t_base=$(now)
    log "buildah build -> $image (FROM $base_image; build log in $OUTPUT_DIR/buildah.log)"
    label_options=()
    for label in "${labels[@]}"; do label_options+=(--label "$label"); done
    # Steps already built are cached (--layers), so a retry resumes where it failed.
    # Docker's image format, not OCI's: only it carries the HEALTHCHECK.
    if ! retry_transient buildah build --pull=never --isolation=chroot --network=host --layers --format docker \
        "${label_options[@]}" -f "$context/env/docker/Dockerfile" -t "$image" -t "$latest" "$context" \
        >"$OUTPUT_DIR/buildah.log" 2>&1; then
        tail -n 40 "$OUTPUT_DIR/buildah.log" >&2
        log "buildah build failed; full log in $OUTPUT_DIR/buildah.log"
        exit 1
    fi
    t_image=$(now)
    image_id=$(podman image inspect --format '{{.Id}}' "$image")
    image_size=$(podman image inspect --format '{{.Size}}' "$image")
    exposed=$(podman image inspect --format '{{json .Config.ExposedPorts}}' "$image")
    if ((SAVE)); then
        archive="$OUTPUT_DIR/$IMAGE_REPOSITORY-$bento_version.oci.tar"
        retry_transient podman save --quiet --format oci-archive -o "$archive" "$image"
    fi
fi
t_end=$(now)

archive_size=0
[[ -n "$archive" ]] && archive_size=$(stat -c %s "$archive")
bento_seconds=$(elapsed "$t0" "$t_bento")
image_seconds=$(elapsed "$t_bento" "$t_image")
save_seconds=$(elapsed "$t_image" "$t_end")
total_seconds=$(elapsed "$t0" "$t_end")
base_seconds=0
if [[ -n "${t_base:-}" ]]; then
    base_seconds=$(elapsed "$t_bento" "$t_base")
    image_seconds=$(elapsed "$t_base" "$t_image")
fi

cat >"$OUTPUT_DIR/build.json" <<EOF
{
  "bento": "$bento_tag",
  "git_revision": "$revision",
  "backend": "$backend",
  "image": "$image",
  "image_latest": "$latest",
  "image_id": "$image_id",
  "image_size_bytes": $image_size,
  "exposed_ports": $exposed,
  "archive": "$archive",
  "archive_size_bytes": $archive_size,
  "seconds": {"bento": $bento_seconds, "base_image": $base_seconds, "image": $image_seconds, "save": $save_seconds, "total": $total_seconds}
}
EOF
echo "image: $image ($backend, id ${image_id:0:12})"
echo "image size: $(awk -v b="$image_size" 'BEGIN { printf "%.0f MB", b / 1e6 }')"
if [[ -n "$archive" ]]; then
    echo "archive: $archive ($(awk -v b="$archive_size" 'BEGIN { printf "%.0f MB", b / 1e6 }'))"
fi
echo "build time: ${total_seconds} s (bento ${bento_seconds} s, base image ${base_seconds} s, image ${image_seconds} s, save ${save_seconds} s)"
