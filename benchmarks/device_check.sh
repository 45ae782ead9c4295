#!/usr/bin/env bash
# The checks only a machine with a CUDA GPU can run (never run by the test suite; about 5 minutes):
#
#     bash benchmarks/device_check.sh          # from the repository root, with the project installed
#
# 1. the GPU and the PyTorch build; 2. the tests that need CUDA (the N:M export to
# torch.sparse.to_sparse_semi_structured among them; the others skip without a GPU); 3. a RigL-ITOP
# run with bf16 autocast on the GPU; 4. a 2:4 structured run on the GPU, exported semi-structured
# and checked against the masked model. Each step prints PASS or FAIL; the script ends with the
# number of failures as its exit status.
set -u
failures=0
step() {
    echo "== $1"
    shift
    if "$@"; then echo "PASS"; else echo "FAIL"; failures=$((failures + 1)); fi
}
cd "$(dirname "$0")/.."
step "GPU" python -c "import torch; assert torch.cuda.is_available(); print(torch.__version__, torch.cuda.get_device_name())"
step "tests that need CUDA" python -m pytest -q -rs tests/sparse/test_convert.py -k "cuda"
out=$(mktemp -d)
step "RigL-ITOP with bf16 autocast on the GPU" itop train --sparse --model lenet5 --data mnist5k --epochs 1 --growth gradient \
    --update_frequency 10 --amp bf16 --device cuda --no-progress --save "$out/amp"
step "2:4 on the GPU, exported semi-structured" python - <<'EOF'
import torch
from torch import nn

import itop

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256)).cuda().half()
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
sparsifier = itop.Sparsifier(model, optimizer, structure="2:4", grow="gradient", update_frequency=5, total_steps=20, seed=0)
for _ in range(20):
    optimizer.zero_grad()
    model(torch.randn(64, 256, device="cuda", dtype=torch.half)).float().square().mean().backward()
    optimizer.step()
    sparsifier.step()
exported = itop.sparse.export(model, sparsifier)
x = torch.randn(128, 256, device="cuda", dtype=torch.half)
with torch.no_grad():
    error = (exported(x) - model(x)).abs().max().item()
print("max abs difference against the masked model:", error)
assert error < 1e-2
EOF
echo "failures: $failures"
exit "$failures"
