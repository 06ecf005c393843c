# Sourced by the scripts that run on a GPU node without network access (docs/benchmarks.md, "On a GPU
# node without network access"):
# unpacks the packages of `make device-kit` (.devkit/site.tar.xz, copied to the node with the checkout)
# into a temporary folder, puts it and the checkout on PYTHONPATH, prints the versions in use, and sets
# $out (the folder named by $OUT, where the results are written to be copied back).
out="${OUT:-/tmp/interdyn-device-out}"
mkdir -p "$out"
kit=.devkit/site.tar.xz
if [ ! -f "$kit" ]; then
    echo "error: $kit is missing: run 'make device-kit' on a machine with network and copy .devkit here with the checkout" >&2
    exit 2
fi
site="$(mktemp -d /tmp/interdyn-site.XXXXXX)"
tar -xJf "$kit" -C "$site" || exit 2
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python3 -c "import torch, lightning, diffusers, av, webdataset, jsonargparse; \
print('torch', torch.__version__, 'lightning', lightning.__version__, 'diffusers', diffusers.__version__, \
'cuda', torch.cuda.get_device_name() if torch.cuda.is_available() else 'none')" || exit 2
