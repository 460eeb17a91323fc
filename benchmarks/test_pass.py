"""A test pass and a training epoch on the CPU: where the time goes, and what each lever buys.

One test pass is what chapter 01 does three times per run: the whole MNIST test split (10,000
images) through a trained-size network with `snipnb.train.evaluate`. One training epoch is
`snipnb.train.fit` over `--train-images` images at the chapter's batch size. Every variant runs in a
fresh process (the allocator's state is per process), after one untimed pass, and the variants are
interleaved, repeated, and reported by min and median, with the machine's load. Each reports:

- CPU seconds of the process (user + system) and wall seconds; system time is the kernel's, which
  is where page faults go; minor page faults;
- achieved GFLOP/s (forward FLOPs counted by `torch.utils.flop_counter`, three times that for a
  training step) per CPU second, and that as a fraction of the machine's peak for the precision
  (a 2,048-square matmul on one thread, measured here first).

Levers, each compared at the same batch size and the same work:
- `glibc`: the C library's default allocator behaviour (`SNIPNB_MALLOC=system`); `kept`: freed
  memory kept in the process (`snipnb.devices.keep_freed_memory`, the library's default);
- batch size of the test pass (the library's CPU default is `devices.EVAL_BATCH_SIZE["cpu"]`);
- `fp32` or `bf16` autocast;
- `plain`: the loop a researcher would otherwise write (a DataLoader over normalised fp32 tensors,
  batch 64, contiguous memory, eager fp32), as the reference;
- `compiled`: for a test pass, `torch.compile` with Inductor's freezing, bf16, on top of `kept` (its
  compile time is printed separately: it is paid once per network, i.e. once per run, and freezing
  holds only while the weights do not change, so only for a run's last test pass); for a training
  epoch, `torch.compile` of the model `fit` trains (its compile time falls in the untimed epoch).

    OMP_NUM_THREADS=1 python benchmarks/test_pass.py --models simple_convnet lenet300_100 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

MNIST_SHAPE = dict(num_classes=10, channels=1, image_size=28, per_class=600, test_per_class=1000)
TRAIN_BATCH = {"simple_convnet": 32, "lenet300_100": 100, "lenet5_caffe": 100}


def _data():
    from snipnb import data

    try:
        return data.load("mnist", True, download=False), data.load("mnist", False, download=False), "MNIST"
    except FileNotFoundError:
        return data.synthetic(True, **MNIST_SHAPE), data.synthetic(False, **MNIST_SHAPE), "synthetic, MNIST-shaped"


def _usage():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime, r.ru_stime, r.ru_minflt, time.perf_counter()


def child(spec: dict) -> dict:
    """One timed job in this (fresh) process; returns its measurements."""
    from torch.utils.flop_counter import FlopCounterMode

    from snipnb import devices, models
    from snipnb.loader import DeviceLoader
    from snipnb.train import evaluate, fit

    torch.set_num_threads(1)
    train, test, _ = _data()
    model = models.build(spec["model"], 10, 1, 28, seed=0)
    with FlopCounterMode(display=False) as counter:
        model(test.images[:1].float())
    flops_per_image = counter.get_total_flops()
    bf16 = spec["precision"] == "bf16"
    purpose = "training" if spec["job"] == "epoch" else "evaluation"
    # what ran: the library falls back to fp32 (one warning) where the CPU lacks native bf16; the
    # compiled pass asks autocast for bf16 itself, so it runs bf16 there, emulated
    used = "bf16" if bf16 and (spec["variant"] == "compiled" or devices.autocast_enabled("cpu", True, purpose)) else "fp32"
    if spec["job"] == "epoch":
        part = train.subset(torch.arange(spec["train_images"]))
        batch = TRAIN_BATCH.get(spec["model"], 64)

        trained = torch.compile(model) if spec["variant"] == "compiled" else model

        def job():
            fit(trained, part, None, 1, batch_size=batch, lr=0.01, device="cpu", amp=bf16, seed=0, progress=False)
        work = 3 * flops_per_image * len(part)
    elif spec["variant"] == "plain":
        images = ((test.images.float() / 255 - test.mean[0]) / test.std[0])
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, test.labels), batch_size=64)

        def job():
            model.eval()
            correct = 0
            with torch.no_grad():
                for x, y in loader:
                    correct += (model(x).argmax(1) == y).sum().item()
        work = flops_per_image * len(test)
    else:
        loader = DeviceLoader(test, spec["batch"], device="cpu", channels_last=True)
        if spec["variant"] == "compiled":
            import torch._inductor.config as inductor

            inductor.freezing = True
            model.eval().to(memory_format=torch.channels_last)
            compiled = torch.compile(model, dynamic=False)
            start = time.perf_counter()
            with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
                compiled(next(iter(loader))[0])
            compile_seconds = time.perf_counter() - start

            def job():
                correct = torch.zeros((), dtype=torch.long)
                with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
                    for x, y in loader:
                        correct += (compiled(x).argmax(1) == y).sum()
                return correct.item()
        else:
            def job():
                evaluate(model, loader, device="cpu", amp=bf16)
        work = flops_per_image * len(test)
    job()  # untimed: first calls allocate and choose kernels
    cpu0, sys0, faults0, wall0 = _usage()
    job()
    cpu1, sys1, faults1, wall1 = _usage()
    out = dict(cpu=cpu1 - cpu0, sys=sys1 - sys0, faults=faults1 - faults0, wall=wall1 - wall0, work=work, used=used)
    if spec["variant"] == "compiled" and spec["job"] == "pass":
        out["compile"] = compile_seconds
    return out


def peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of one n x n matmul on one thread, best of `repeats`."""
    torch.set_num_threads(1)
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_child(spec: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if spec["allocator"] == "glibc":
        env["SNIPNB_MALLOC"] = "system"
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env=env, capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def variants(args) -> list[dict]:
    specs = []
    for model in args.models:
        specs.append(dict(model=model, job="pass", variant="plain", batch=64, allocator="glibc", precision="fp32"))
        for batch in args.batches:
            for allocator in ("glibc", "kept"):
                for precision in ("fp32", "bf16"):
                    specs.append(dict(model=model, job="pass", variant="evaluate", batch=batch, allocator=allocator,
                                      precision=precision))
        if args.compiled:
            specs.append(dict(model=model, job="pass", variant="compiled", batch=64, allocator="kept", precision="bf16"))
        for allocator in ("glibc", "kept"):
            for precision in ("fp32", "bf16"):
                specs.append(dict(model=model, job="epoch", variant="fit", batch=TRAIN_BATCH.get(model, 64),
                                  allocator=allocator, precision=precision, train_images=args.train_images))
        if args.compiled:
            specs.append(dict(model=model, job="epoch", variant="compiled", batch=TRAIN_BATCH.get(model, 64),
                              allocator="kept", precision="fp32", train_images=args.train_images))
    return specs


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["simple_convnet", "lenet5_caffe", "lenet300_100"])
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256, 2048])
    parser.add_argument("--train-images", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-compiled", dest="compiled", action="store_false")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    from snipnb import devices

    native = devices.bf16_native("cpu")
    peaks = {"fp32": peak(torch.float32), "bf16": peak(torch.bfloat16, n=2048 if native else 512)}  # emulated: slow
    specs = variants(args)
    results = {i: [] for i in range(len(specs))}
    load_before = os.getloadavg()[0]
    for _ in range(args.repeats):
        for i, spec in enumerate(specs):  # interleaved: every variant once per repeat
            results[i].append(run_child(spec))
    load_after = os.getloadavg()[0]
    from snipnb.provenance import device_name

    bf16_peak = (f"{peaks['bf16']:.0f} GFLOP/s (2048² matmul)" if native
                 else f"{peaks['bf16']:.2f} GFLOP/s (not native: emulated, 512² matmul)")
    print(f"device: {device_name('cpu')}, 1 thread per process; torch {torch.__version__}; {_data()[2]}; "
          f"peak on one core: fp32 {peaks['fp32']:.0f} GFLOP/s (2048² matmul), bf16 {bf16_peak}; "
          f"{args.repeats} interleaved repeats, each in a fresh process; load average {load_before:.1f} before, "
          f"{load_after:.1f} after")
    print("| model | job | variant | batch | allocator | precision | CPU s min | CPU s median | of which kernel | "
          "wall s min | page faults | GFLOP/s | of peak |")
    print("| --- | --- | --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for i, spec in enumerate(specs):
        rs = results[i]
        cpu = [r["cpu"] for r in rs]
        best = min(rs, key=lambda r: r["cpu"])
        rate = best["work"] / best["cpu"] / 1e9
        job = "test pass" if spec["job"] == "pass" else f"epoch of {spec['train_images']}"
        extra = f" (compile {min(r['compile'] for r in rs):.1f} s)" if "compile" in rs[0] else ""
        used = best["used"]
        precision = spec["precision"] if used == spec["precision"] else f"{spec['precision']} asked, {used} ran"
        of_peak = f"{rate / peaks[used]:.0%}" if native or used == "fp32" else "(emulated)"
        print(f"| {spec['model']} | {job} | {spec['variant']}{extra} | {spec['batch']} | {spec['allocator']} | "
              f"{precision} | {min(cpu):.2f} | {statistics.median(cpu):.2f} | {best['sys']:.2f} | "
              f"{min(r['wall'] for r in rs):.2f} | {int(statistics.median(r['faults'] for r in rs)):,} | {rate:.1f} | "
              f"{of_peak} |", flush=True)


if __name__ == "__main__":
    main()
