"""LeNet-300-100 at SNIP's sparsities: the dense masked layers the library uses, against sparse (CSR) ones.

At 95-98% sparsity most of LeNet-300-100's multiply-adds are with zeros, so a compressed-sparse-row
matmul (`torch.sparse.mm`) could skip them. This times both ways of computing the same network on
the CPU, one thread, interleaved and repeated:

- `dense masked`: what `snipnb.masks` does, the masked weight times the input (`F.linear`);
- `CSR`: every linear layer as a CSR matrix of its kept weights, trained through its values (a
  1-D parameter per layer; the sparsity pattern is fixed, as a mask is).

for a training step (forward, backward, SGD with momentum) at the chapter's batch of 100 and a test
batch of 64 images. The network is SNIP-pruned on MNIST (else synthetic data of its shape) and
both versions are checked to compute the same logits first.

    OMP_NUM_THREADS=1 python benchmarks/lenet_sparse.py --sparsities 0.95 0.98 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import warnings

import torch
import torch.nn.functional as F

from snipnb import data
from snipnb.experiment import build_pruned
from snipnb.provenance import device_name


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class CsrMlp(torch.nn.Module):
    """The same MLP with every linear layer a CSR matrix of the masked weight's nonzeros."""

    def __init__(self, model):
        super().__init__()
        self.layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        self.patterns, self.shapes = [], []
        self.values, self.biases = torch.nn.ParameterList(), torch.nn.ParameterList()
        for layer in self.layers:
            csr = layer.weight.detach().to_sparse_csr()
            self.patterns.append((csr.crow_indices(), csr.col_indices()))
            self.shapes.append(tuple(layer.weight.shape))
            self.values.append(torch.nn.Parameter(csr.values().clone()))
            self.biases.append(torch.nn.Parameter(layer.bias.detach().clone()))

    def forward(self, x):
        h = x.flatten(1)
        for i, ((crow, col), values, bias) in enumerate(zip(self.patterns, self.values, self.biases)):
            weight = torch.sparse_csr_tensor(crow, col, values, self.shapes[i])
            h = torch.sparse.mm(weight, h.T).T + bias
            if i < len(self.patterns) - 1:
                h = F.relu(h)
        return h


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.95, 0.98])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="Sparse (invariant checks|CSR tensor support)")
    try:
        train, source = data.load("mnist", True, download=False), "MNIST"
    except FileNotFoundError:
        train, source = data.synthetic(True, num_classes=10, channels=1, image_size=28, per_class=100), "synthetic"
    load = os.getloadavg()[0]
    print(f"device: {device_name('cpu')}, 1 thread; torch {torch.__version__}; LeNet-300-100 SNIP-pruned on {source}; "
          f"{args.steps} steps per timing, {args.repeats} interleaved repeats; load average {load:.1f}")
    print("| sparsity | kept per layer | job | dense masked ms (min / median) | CSR ms (min / median) | CSR speed-up (min) |")
    print("| ---: | --- | --- | ---: | ---: | ---: |")
    for sparsity in args.sparsities:
        dense, masks = build_pruned("lenet300_100", "snip", sparsity, 0, train, saliency_per_class=10)
        sparse = CsrMlp(dense)
        x, y = torch.randn(100, 1, 28, 28), torch.randint(0, 10, (100,))
        test = torch.randn(64, 1, 28, 28)
        torch.testing.assert_close(sparse(x), dense(x), rtol=1e-4, atol=1e-4)
        optimizers = {id(m): torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (dense, sparse)}

        def step(model):
            loss = F.cross_entropy(model(x), y)
            optimizers[id(model)].zero_grad()
            loss.backward()
            optimizers[id(model)].step()

        @torch.no_grad()
        def test_batch(model):
            model(test)

        kept = ", ".join(f"{float(m.float().mean()):.1%}" for m in masks.values())
        for job, fn in (("training step, batch 100", step), ("test batch of 64", test_batch)):
            times = {"dense": [], "csr": []}
            for _ in range(args.repeats):
                for name, model in (("dense", dense), ("csr", sparse)):
                    for _ in range(20):
                        fn(model)
                    start = cpu_seconds()
                    for _ in range(args.steps):
                        fn(model)
                    times[name].append((cpu_seconds() - start) / args.steps * 1e3)
            d, c = times["dense"], times["csr"]
            print(f"| {sparsity:.0%} | {kept} | {job} | {min(d):.3f} / {statistics.median(d):.3f} | "
                  f"{min(c):.3f} / {statistics.median(c):.3f} | {min(d) / min(c):.2f}x |", flush=True)


if __name__ == "__main__":
    main()
