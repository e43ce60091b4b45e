# Source on a GPU machine without a package index: installs the carried .whl/ bundle (built by the
# team's gpu-wheels script) and this project into /tmp, keeping the machine's own torch and triton.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --upgrade --target /tmp/lrkv . || return 1
export PYTHONPATH=/tmp/lrkv:/tmp/site PYTHONUNBUFFERED=1 HF_DATASETS_OFFLINE=1
