"""One training step of non-private SGD, DP-SGD, Biased-GEP and GEP, side by side in one process.

    python benchmarks/gep_step.py                       # CPU sizes of the issue; saves benchmarks/results/
    python benchmarks/gep_step.py --batch 1000 --public 2000 --bases 1000   # the paper's sizes (GPU)

For each network (ResNet20-GN on 3x32x32, the small CNN on 1x28x28) it times, best of ``--repeat``:

* the non-private step (mean loss, backward, SGD step), the reference for every ratio;
* DP-SGD, Biased-GEP and GEP with each per-sample backend (torch.func, BackPACK);
* GEP's unavoidable parts timed alone: per-sample gradients of the private batch and of the public
  samples, and the power-iteration and projection matrix products with the clipped sums (the sum is the
  floor a GEP step can reach without changing the algorithm);
* GEP done the original way: BackPACK, modified Gram-Schmidt, the n x p reconstruction materialised, and
  the approximation-error check the original computes every step;
* GEP with the subspace recomputed only every ``--refresh`` steps (not in the paper), timed over that many
  steps and reported per step.

Memory: on a GPU the peak allocated memory of each variant; on a CPU the size of the per-sample gradient
matrices, which dominates.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from common import best_time, save_results

from dpbook import gep, models, persample

try:
    import backpack  # noqa: F401  (BackPACK's variants and the original way need it)
    HAS_BACKPACK = True
except ImportError:
    HAS_BACKPACK = False
    print("BackPACK is not installed: its variants and the original way are skipped "
          "(pip install backpack-for-pytorch)")


def non_private_step(model, optimizer, x, y):
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    optimizer.step()


def private_step(engine, optimizer, x, y):
    engine.step(x, y)
    optimizer.step()


def original_gep_step(engine, optimizer, x, y):
    """The original code's order of work: BackPACK, Gram-Schmidt, n x p reconstruction, error check."""
    anchors = persample.flatten(persample.per_sample_gradients(engine.model, engine.public_x, engine.public_y,
                                                               backend="backpack"))
    bases = gep.anchor_subspace(anchors, engine.groups, engine.budgets, orthogonalize="gram_schmidt")
    for basis, group in zip(bases, engine.groups):  # check_approx_error, every step in the original
        a = anchors[:, group]
        float(((a - (a @ basis) @ basis.T) ** 2).sum() / (a**2).sum())
    grads = persample.flatten(persample.per_sample_gradients(engine.model, x, y, backend="backpack"))
    w, _ = gep.embed(grads, bases, engine.groups)
    rebuilt = torch.cat([w_g @ b.T for w_g, b in zip(torch.split(w, [b.shape[1] for b in bases], 1), bases)], 1)
    residual = grads - rebuilt  # materialised, as in the original
    w_c, r_c = gep.clip_rows(w, engine.clip_embedding), gep.clip_rows(residual, engine.clip_residual)
    noisy = gep.reconstruct(w_c.sum(0), bases, engine.groups, engine.n_params) + r_c.sum(0)
    for p, g in zip(engine.params.values(), persample.unflatten(noisy, engine.params).values()):
        p.grad = g.clone()
    optimizer.step()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256, help="private batch size")
    parser.add_argument("--public", type=int, default=512, help="public (anchor) samples")
    parser.add_argument("--bases", type=int, default=512, help="total number of bases k")
    parser.add_argument("--groups", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--refresh", type=int, default=10, help="K of the refresh-every-K variant")
    parser.add_argument("--networks", nargs="+", default=["resnet20-gn", "small-cnn"])
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shapes = {"resnet20-gn": (3, 32), "small-cnn": (1, 28)}
    rows = []
    for net in args.networks:
        channels, size = shapes[net]
        torch.manual_seed(0)
        model = models.build(net, in_channels=channels, image_size=size, n_classes=10).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        x = torch.randn(args.batch, channels, size, size, device=device)
        y = torch.randint(0, 10, (args.batch,), device=device)
        public = torch.randn(args.public, channels, size, size, device=device)
        p = models.n_parameters(model)

        def engine(mode, backend, refresh_every=1):
            return gep.GEP(model, public, n_classes=10, mode=mode, n_bases=args.bases, n_groups=args.groups,
                           noise_multiplier=1.0, sample_rate=args.batch / 50_000, dataset_size=50_000,
                           backend=backend, refresh_every=refresh_every)

        def every_k_steps(e=engine("gep", "func", args.refresh)):
            for _ in range(args.refresh):  # one refresh and K - 1 steps that reuse the subspace
                private_step(e, optimizer, x, y)

        gep_func = engine("gep", "func")
        gep_func.refresh_subspace()
        anchors = gep_func._flat_grads(gep_func.public_x, gep_func.public_y, "public").clone()
        grads = gep_func._flat_grads(x, y).clone()
        variants = {
            "non-private SGD": lambda: non_private_step(model, optimizer, x, y),
            "DP-SGD (func)": lambda e=engine("dpsgd", "func"): private_step(e, optimizer, x, y),
            "DP-SGD (backpack)": lambda e=engine("dpsgd", "backpack"): private_step(e, optimizer, x, y),
            "Biased-GEP (func)": lambda e=engine("biased", "func"): private_step(e, optimizer, x, y),
            "GEP (func)": lambda: private_step(gep_func, optimizer, x, y),
            "GEP (backpack)": lambda e=engine("gep", "backpack"): private_step(e, optimizer, x, y),
            "GEP, the original way": lambda e=engine("gep", "backpack"): original_gep_step(e, optimizer, x, y),
            f"GEP (func), subspace every {args.refresh} steps": every_k_steps,
            "part: private per-sample grads": lambda: gep_func._flat_grads(x, y),
            "part: public per-sample grads": lambda: gep_func._flat_grads(gep_func.public_x, gep_func.public_y,
                                                                          "public"),
            "part: power iteration + projection": lambda: gep.clipped_sums(grads, gep.anchor_subspace(
                anchors, gep_func.groups, gep_func.budgets, generator=gep_func.public_gen), gep_func.groups,
                mode="gep", clip_embedding=5.0, clip_residual=2.0),
        }
        if not HAS_BACKPACK:  # the GPU box may lack it; the func backend needs nothing more than torch
            variants = {k: v for k, v in variants.items() if "backpack" not in k and "original way" not in k}
        timings = {}
        for name, fn in variants.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            _, seconds = best_time(fn, args.repeat)
            if name.endswith(f"every {args.refresh} steps"):
                seconds /= args.refresh  # per step
            rows_of_g = (args.public if "public" in name else
                         args.batch if ("DP-SGD" in name or "non-private" in name or "private" in name) else
                         args.batch + args.public)
            memory = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
                      else 0.0 if name == "non-private SGD" else 4 * rows_of_g * p / 2**20)
            timings[name] = seconds
            rows.append(dict(network=net, variant=name, seconds=seconds, memory_mb=memory, batch=args.batch,
                             public=args.public, bases=args.bases, groups=args.groups, parameters=p))
            print(f"{net:<12} {name:<36} {seconds:8.3f} s  {seconds / timings['non-private SGD']:6.2f}x non-private"
                  f"  {memory:8.0f} MB{' (GPU peak)' if device.type == 'cuda' else ' (per-sample grads)'}",
                  flush=True)
        floor = sum(v for k, v in timings.items() if k.startswith("part:"))
        original = timings.get("GEP, the original way", float("nan"))
        print(f"{net:<12} GEP (func) / sum of its unavoidable parts: {timings['GEP (func)'] / floor:.2f}x;"
              f" original way / GEP (func): {original / timings['GEP (func)']:.2f}x;"
              f" DP-SGD (func) / non-private: {timings['DP-SGD (func)'] / timings['non-private SGD']:.2f}x")
        rows.append(dict(network=net, summary=True,
                         gep_over_parts=timings["GEP (func)"] / floor,
                         original_over_gep=original / timings["GEP (func)"],
                         dpsgd_over_nonprivate=timings["DP-SGD (func)"] / timings["non-private SGD"],
                         refresh_speedup=timings["GEP (func)"] / timings[f"GEP (func), subspace every {args.refresh} steps"]))
    save_results("gep_step", rows)


if __name__ == "__main__":
    main()
