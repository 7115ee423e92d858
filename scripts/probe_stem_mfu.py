"""AlexNet bf16 channels_last SGD step on one GPU: plain stem vs space-to-depth stem, eager and compiled (the MFU
profile in docs/benchmarks.md).

Run: PYTHONPATH=src python3 scripts/probe_stem_mfu.py OUT.json
(results: results/h100-2026-11-26/stem-eval-data/s2d_probe*)"""

import json
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from convnets.models import create_model
from convnets.models.space_to_depth import use_space_to_depth_stem

torch.backends.cudnn.benchmark = True
PEAK = 989.4e12
GF = {"alexnet": 4.28513088e9, "alexnet2012": 4.346440896e9}
out, path = {}, sys.argv[1]


def run(arch, batch, mode, s2d, steps=20, warm=5, prof=False):
    torch.manual_seed(0)
    net = create_model(arch, num_classes=1000)
    if s2d:
        use_space_to_depth_stem(net)
    net = net.cuda().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, 224, 224, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device="cuda")
    fwd = net if mode == "eager" else torch.compile(net)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(fwd(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    t0 = time.time()
    for _ in range(warm):
        step()
    torch.cuda.synchronize()
    tc = time.time() - t0
    rates = []
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        rates.append(batch * steps / (time.perf_counter() - t))
    rates.sort()
    r = {"img_s": rates[len(rates) // 2], "mfu": rates[len(rates) // 2] * GF[arch] / PEAK, "warm_s": round(tc, 1)}
    key = f"{arch}_b{batch}_{mode}_{'s2d' if s2d else 'plain'}"
    out[key] = r
    json.dump(out, open(path, "w"), indent=1)
    print(key, json.dumps(r), flush=True)
    if prof:
        with profile(activities=[ProfilerActivity.CUDA]) as p:
            for _ in range(3):
                step()
            torch.cuda.synchronize()
        print(p.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60), flush=True)


run("alexnet", 1024, "eager", False)
run("alexnet", 1024, "eager", True, prof=True)
run("alexnet", 2048, "compile", True, prof=True)
run("alexnet", 2048, "compile", False)
run("alexnet2012", 256, "eager", False)
run("alexnet2012", 256, "eager", True)
run("alexnet", 1024, "compile", True)
