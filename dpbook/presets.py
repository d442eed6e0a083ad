"""Named settings of every experiment and notebook, per profile (see :mod:`dpbook.config`).

Each entry of :data:`PRESETS` has a ``base`` dictionary of defaults (one comment per key) and, per profile,
only the keys that differ (the nanoGPT habit). This module holds data only: a notebook's provenance stamp
hashes the entries it read (:func:`dpbook.config.settings` records them), so editing one preset makes only
the notebooks that used it stale (:mod:`dpbook.provenance`).
"""
from __future__ import annotations

from typing import Any

# ---------------------------------------------------------------------------------------------------
# Presets. Later chapters add their entries here, so that one table shows every size the book uses.
# ---------------------------------------------------------------------------------------------------
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # notebooks/01_dp_primer.ipynb: accounting only, no training.
    "dp_primer": {
        "base": dict(
            delta=1e-5,               # target delta of every (epsilon, delta) statement in the chapter
            sample_rate=256 / 60_000,  # q of an MNIST-sized DP-SGD run with batch 256
            epochs=60,                # length of the DP-SGD run whose epsilon we plot
            sigmas=(0.7, 1.0, 1.5, 2.0),  # noise multipliers compared in the epsilon-vs-steps figure
            n_curve_points=25,        # points per epsilon-vs-steps curve (RDP)
            n_pld_points=8,           # points on the RDP-vs-PLD comparison (PLD is the slow one)
            pld_discretization=1e-3,  # value_discretization_interval of the PLD accountant
            n_laplace_trials=20_000,  # repetitions of the Laplace counting query in the histograms
            minutes=1.0,              # expected run time of the notebook on this profile's hardware
        ),
        "smoke": dict(epochs=10, n_curve_points=6, n_pld_points=3,
                      n_laplace_trials=2_000, minutes=0.3),
        "laptop": dict(),
        "paper": dict(n_pld_points=12, pld_discretization=1e-4, minutes=2.0),
    },
    # notebooks/30_mutual_information.ipynb: kNN estimators validated on Gaussians, scale, speed.
    "mutual_information": {
        "base": dict(
            n_samples=5_000,                      # rows per estimate in the dimension study
            dims=(1, 2, 5, 10, 20, 50, 100),      # dimensions d of x and of y (d correlated pairs)
            rhos=(0.5, 0.9),                      # correlation of each pair
            sample_sizes=(250, 500, 1_000, 2_000, 5_000, 10_000),  # n in the sample-size study
            repeats=3,                            # independent samples per point (mean and spread)
            n_permutations=20,                    # permutations in the independence test
            speed_n=2_000,                        # rows in the in-notebook speed comparison
            minutes=1.5,                          # expected run time (laptop: ~70 s on 2 cores)
        ),
        "smoke": dict(n_samples=800, dims=(1, 5, 20), sample_sizes=(200, 400, 800), repeats=1,
                      n_permutations=5, speed_n=300, minutes=0.5),
        "laptop": dict(),
        "paper": dict(n_samples=20_000, sample_sizes=(250, 1_000, 4_000, 16_000, 64_000), repeats=5,
                      n_permutations=100, speed_n=5_000, minutes=5.0),
    },
    # notebooks/40_certified_robustness.ipynb: attacks, PixelDP certificates, randomized smoothing.
    "certified_robustness": {
        "base": dict(
            dataset="fashion-mnist",  # real data; pixels scaled to [0, 1]
            max_train=20_000,         # training examples used (0: all)
            validation=2_000,         # held out of the training split
            epochs=3,                 # passes over the training examples, for each noisy network
            batch_size=128,           # Adam batch
            lr=1e-3,                  # Adam learning rate
            input_scale=0.25,         # b_x: Laplace scale of the input noise (pixels in [0, 1])
            latent_scale=1.0,         # b_h: Laplace scale of the noise after the first convolution
            gaussian_sigma=0.25,      # sigma of the Gaussian-input network (randomized smoothing)
            n_test=300,               # test points certified
            n_draws=1_000,            # Monte-Carlo votes per point
            eta=0.05,                 # failure probability of the certificate
            attack_sizes=(0.02, 0.05, 0.1),  # l_inf sizes of the attack table
            attack_steps=20,          # iterations of I-FGSM, MIM and PGD
            eot=8,                    # noise draws per gradient when attacking the noisy network
            attack_draws=500,         # votes to decide whether an attacked point's prediction changed
            minutes=8.0,              # expected run time (laptop: ~8 min on 2 cores, mostly Monte-Carlo votes)
        ),
        "smoke": dict(dataset="digits", max_train=0, validation=100, epochs=25, lr=3e-3, n_test=40, n_draws=100,
                      attack_steps=5, eot=2, attack_draws=50, minutes=0.5),
        "laptop": dict(),
        "paper": dict(max_train=0, validation=5_000, epochs=10, n_test=1_000, n_draws=2_000, attack_steps=100,
                      eot=32, attack_draws=1_000, minutes=20.0),
    },
    # notebooks/20_gep_algorithm.ipynb: GEP's steps on per-sample gradients of a real network.
    "gep_algorithm": {
        "base": dict(
            dataset="fashion-mnist",  # real data, standard-scaled as in the GEP code
            warmup_steps=200,         # non-private Adam steps (batch 128) before we look at gradients
            n_private=256,            # rows of the private gradient matrix G
            public=512,               # public anchors m (random labels, as the code)
            n_groups=3,               # equal contiguous groups
            n_bases=256,              # k of the step-by-step part
            bases_sweep=(4, 8, 16, 32, 64, 128, 256, 512),  # k in the projection-error study
            power_iters=(1, 2, 4),    # t in the power-iteration study
            clip_embedding=5.0,       # S_0 (the code's default)
            clip_residual=2.0,        # S_1
            epsilon=8.0,              # budget whose sigma we show (5 epochs of batch 256, as the experiments)
            delta=1e-5,
            epochs=5,
            batch_size=256,
            engine_steps=40,          # GEP steps of the drop-in training loop
            minutes=2.5,              # expected run time (laptop, 2 cores)
        ),
        "smoke": dict(dataset="digits", warmup_steps=60, n_private=64, public=128, n_bases=32,
                      bases_sweep=(4, 8, 16, 32, 64, 128), batch_size=64, epochs=2, engine_steps=10, minutes=0.3),
        "laptop": dict(),
        "paper": dict(minutes=2.0),
    },
    # notebooks/21_gep_experiments.ipynb: the gep experiment at several budgets, the accounting audit, speed.
    "gep_experiments": {
        "base": dict(
            epsilons=(2.0, 8.0),                  # target epsilons of the trained runs (settings("gep") for the rest)
            methods=("dpsgd", "biased", "gep"),   # compared methods, same network, epochs and public data
            refresh_every=10,                     # K of the refresh-every-K study (GEP only)
            audit=(("cifar10", 2.0), ("cifar10", 5.0), ("cifar10", 8.0), ("mnist", 8.0),
                   ("svhn", 2.0), ("svhn", 5.0), ("svhn", 8.0)),  # paper settings of the accounting audit
            pld_discretization=1e-4,              # of the PLD accountant in the audit
            minutes=2.0,                          # with the runs' results present; training them all: ~80 min
        ),
        "smoke": dict(audit=(("cifar10", 8.0), ("svhn", 8.0)), pld_discretization=1e-3, minutes=1.0),
        "laptop": dict(),
        "paper": dict(minutes=5.0),
    },
    # dpbook.experiments.gep_experiment: GEP, Biased-GEP or DP-SGD trained to a privacy target.
    "gep": {
        "base": dict(
            method="gep",             # "gep", "biased" (Biased-GEP) or "dpsgd"
            dataset="fashion-mnist",  # any name of dpbook.data.DATASETS
            model="small-cnn",        # any name of dpbook.models.MODELS; "auto": resnet20-gn for colour images
            epsilon=8.0,              # target epsilon
            delta=1e-5,               # target delta
            accounting="joint",       # "joint" (sound) or "original" (the code's 2x RDP, legacy conversion)
            epochs=5,                 # passes (1/q Poisson steps each); 0: the paper's for dataset and epsilon
            batch_size=256,           # expected batch size B = q N
            sampling="poisson",       # "poisson" (what the accountant assumes) or "shuffle" (the code's batches)
            public=512,               # public anchor examples m
            public_source="heldout",  # "heldout" (cut from the training split), another dataset's name
                                      # ("cifar100", "digits": resized), "noise", or an images file
            public_labels="random",   # "random" (drawn once, code), "redraw" (every refresh, paper), "real"
            validation=5_000,         # private examples held out for choosing settings (0: the code's protocol,
                                      # test accuracy every epoch); the test set is then read once, at the end
            extra=False,              # SVHN only: add the 531,131 "extra" images to the private data (paper)
            max_train=0,              # private examples used (0: all)
            n_bases=256,              # total basis size k
            grouping="equal",         # "equal" contiguous chunks (code) or "layers" (paper: one per block)
            n_groups=3,               # number of equal chunks
            clip_embedding=5.0,       # S_0
            clip_residual=2.0,        # S_1 (DP-SGD's clipping norm)
            lr=0.1,                   # SGD learning rate (momentum 0.9; x0.1 at 50% and 75% of the steps)
            weight_decay=2e-4,        # as in the code
            refresh_every=1,          # recompute the anchor subspace every this many steps
            backend="func",           # per-sample gradients: "func" or "backpack"
            scale="symmetric",        # pixels in [-1, 1]: data-independent; "standard" z-scores with the
                                      # training images' mean and std, statistics of the private data
            seed=0,                   # initialisation, public labels and splits (never the DP noise)
            minutes=8.0,              # expected run time (laptop GEP: 0.41 s per step, 232 steps per epoch)
        ),
        "smoke": dict(dataset="digits", epochs=2, batch_size=64, public=200, validation=200, n_bases=64,
                      minutes=0.2),
        # sized so that gep_tuning's 60 runs fit in about an hour on a CPU: 117 steps; one thread, GEP and
        # Biased-GEP ~70 s a run (0.55 s a step), DP-SGD ~25 s
        "laptop": dict(max_train=10_000, epochs=3, minutes=1.2),
        # public data out of distribution, as the paper's (2,000 downsampled ImageNet images, a file the code
        # does not distribute): the code's other option, the first 2,000 CIFAR-100 test images (its README:
        # "similar performance"); held-out CIFAR-10 anchors come from the private task's own distribution and
        # flatter GEP (chapter 21 measures by how much). CIFAR-100 stands in for SVHN too (the code gives SVHN
        # the same ImageNet file); a one-channel dataset (mnist) needs public_source="heldout", another
        # one-channel dataset or an images file of your own. Every training example then stays private.
        "paper": dict(dataset="cifar10", model="auto", epochs=0, batch_size=1000, public=2_000,
                      public_source="cifar100", n_bases=1000, minutes=600.0),
    },
    # dpbook.experiments.tuning: GEP, Biased-GEP and DP-SGD on equal grids chosen on validation, then seeds.
    # Every run is a gep experiment with settings("gep") of the same profile (sizes, validation, scale).
    "gep_tuning": {
        "base": dict(
            epsilons=(2.0, 8.0),                  # target epsilons
            methods=("dpsgd", "biased", "gep"),   # tuned methods, each on the same grid
            lrs=(0.03, 0.1, 0.3, 1.0),            # learning rates of the grid (0.1: the original code's)
            clips=(1.0, 2.0),                     # C of DP-SGD = S_1 of GEP (2: the code's); S_0 = clip_ratio * C
            clip_ratio=2.5,                       # S_0 / S_1 of GEP and Biased-GEP (the code's 5 / 2)
            seeds=3,                              # fresh runs at each chosen point (seeds 1..3; not the grid's seed 0)
            epochs=0,                             # epochs of every run (0: settings("gep").epochs)
            minutes=60.0,                         # expected run time, all 60 runs trained (laptop, one thread)
        ),
        "smoke": dict(epsilons=(8.0,), lrs=(0.03, 0.3), clips=(2.0,), epochs=1, minutes=0.5),
        "laptop": dict(),
        "paper": dict(minutes=36_000.0),                # 60 CIFAR-10 runs of ~10 h on one GPU
    },
    # dpbook.experiments.gep_public: GEP's anchors in and out of the private task's distribution, at the tuned point.
    # The runs are gep_tuning's GEP seeds with only public_source changed (settings("gep") of the profile).
    "gep_public_data": {
        "base": dict(
            epsilons=(2.0, 8.0),              # budgets compared (each a GEP cell of gep_tuning)
            in_distribution="heldout",        # public_source of the in-distribution anchors (the private task's)
            out_of_distribution="digits",     # public_source of the other anchors: 8x8 digits resized to 28x28
            minutes=12.0,                     # laptop, one thread, gep_tuning present: 6 GEP runs of ~2 min
        ),
        "smoke": dict(epsilons=(8.0,), out_of_distribution="noise", minutes=1.0),  # no other 8x8 dataset offline
        "laptop": dict(),
        "paper": dict(out_of_distribution="cifar100", minutes=3_600.0),  # 6 held-out CIFAR-10 runs of ~10 h
    },
    # notebooks/31_shredder_algorithm.ipynb: the split, the noise layer, one run, a small pool.
    "shredder_algorithm": {
        "base": dict(
            dataset="fashion-mnist",  # resized to 32x32, pixels in [0, 1]
            validation=5_000,         # acceptance split
            max_train=20_000,         # training examples (the base network and the noise runs)
            public_threshold=5,       # public task: label > 5
            base_epochs=3,            # Adam epochs of the base LeNet-5
            base_lr=1e-3,
            laplace_scale=20.0,       # b of the Laplace initialisation of n
            pairing="ratio",          # pairing term of the runs ("ratio", "difference" or "none")
            pairing_weight=1.01,      # its lambda (the comparison uses 0.01 for "difference")
            lr=1e-2,                  # Adam on (w, n); the code's 1e-3 also passes the bar, 1e-2 gets there sooner
            batch_size=256,
            epochs=40,                # of the step-by-step run
            min_epochs=28,
            accept_drop=0.03,
            pool_runs=3,              # independent runs of the small pool
            minutes=2.0,              # expected run time (laptop, 2 cores)
        ),
        "smoke": dict(dataset="digits", validation=300, max_train=0, base_epochs=15, base_lr=3e-3, laplace_scale=3.0,
                      lr=1e-2, batch_size=64, epochs=12, min_epochs=3, minutes=0.3),
        "laptop": dict(),
        "paper": dict(max_train=0, base_epochs=10, pool_runs=10, minutes=5.0),
    },
    # notebooks/32_shredder_experiments.ipynb: the shredder experiment over noise scales.
    "shredder_experiments": {
        "base": dict(
            laplace_scales=(3.0, 10.0, 20.0),  # b of the sweep (settings("shredder") for everything else)
            additive_control=True,             # also run additive-only noise (w = 1) at the largest b
            minutes=1.0,                       # with the runs' results present; training them: ~20 min
        ),
        "smoke": dict(laplace_scales=(3.0, 20.0), minutes=1.0),
        "laptop": dict(),
        "paper": dict(minutes=2.0),
    },
    # dpbook.experiments.shredder_experiment: a pool of learned noise and its measurements.
    "shredder": {
        "base": dict(
            dataset="fashion-mnist",  # images resized to 32x32, pixels in [0, 1] (the code's MNIST transform)
            validation=5_000,         # held out of the training split: base-network and noise acceptance
            max_train=0,              # training examples used (0: all)
            public_threshold=5,       # public task: label > 5 (the code's "digit > 5"); private: the label
            cut="relu5",              # edge = LeNet-5 up to c5 + ReLU, activation (120, 1, 1)
            base_epochs=5,            # Adam epochs of the frozen base networks (public and 10-class)
            base_lr=1e-3,
            base_batch_size=128,
            laplace_scale=20.0,       # b of n's Laplace(0, b) initialisation (the code's "std20")
            multiplicative=True,      # learn w too (v2); False: additive noise only (v1, ASPLOS)
            pairing="ratio",          # "ratio" (the commit that made the released pool), "difference" (HEAD), "none"
            pairing_weight=1.01,      # lambda of the pairing term (1.01 with "ratio", 0.01 with "difference")
            lr=1e-3,                  # Adam on (w, n) (the code's)
            batch_size=256,
            epochs=40,                # at most this many epochs per noise-training run
            min_epochs=28,            # accept no earlier than this (the code: epoch > 27)
            accept_drop=0.03,         # accept when validation accuracy >= clean validation accuracy - this
            reset_optimizer_each_epoch=False,  # True: re-create Adam every epoch, as the code
            pool_size=10,             # accepted samples wanted (the released pool has 149)
            max_runs=30,              # give up after this many runs
            mi_samples=4_000,         # test images in the MI estimates (n/2 joint points for ite_dkl)
            mi_k=3,                   # neighbours of the MI estimators
            mi_seeds=5,               # permutation seeds of the ite_dkl estimates (mean and sd)
            adversary_train=20_000,   # training examples of the adversary MLP (0: all)
            adversary_draws=2,        # noise draws per training example the adversary sees
            adversary_epochs=20,
            seed=0,                   # splits, initialisations, evaluation draws
            minutes=4.0,              # expected run time (laptop, 2 cores)
        ),
        "smoke": dict(dataset="digits", validation=300, base_epochs=15, base_lr=3e-3, base_batch_size=64,
                      lr=1e-2, batch_size=64, epochs=12, min_epochs=3, pool_size=3, max_runs=6, mi_samples=300,
                      mi_seeds=2, adversary_train=0, adversary_epochs=30, minutes=0.3),
        # lr 1e-2 instead of the code's 1e-3, for speed: runs reach the acceptance bar in fewer epochs on a
        # laptop (a run at 1e-3 passes it too, later).
        "laptop": dict(lr=1e-2),
        "paper": dict(dataset="mnist", base_epochs=10, pool_size=149, max_runs=1_000, mi_samples=10_000,
                      mi_seeds=10, adversary_train=0, adversary_epochs=30, minutes=60.0),
    },
    # dpbook.experiments.shredder_attacks: the shredder pool under four threat models, reconstruction, MI controls.
    "shredder_attacks": {
        "base": dict(
            laplace_scale=20.0,       # which shredder run's pool (its other settings: settings("shredder"))
            multiplicative=True,      # False: the additive-only pool
            attacker_train=20_000,    # training-split examples the attackers hold, with labels (0: all)
            seeds=3,                  # noise draws, probe initialisations and clusterings (mean, 95% interval)
            probe_hidden=256,         # width of the attackers' MLP probes (two hidden layers)
            probe_epochs=20,
            probe_lr=1e-3,
            k_max=20,                 # most clusters the blind and adaptive attackers try (they do not know M)
            decoder_hidden=512,       # the reconstruction decoder (MLP, two hidden layers)
            decoder_epochs=15,
            decoder_lr=1e-3,
            n_images=8,               # test images kept with their reconstructions for a figure
            mi_samples=4_000,         # test images in the MI estimates
            mi_k=3,                   # neighbours of the MI estimators
            mi_seeds=3,               # permutation seeds of the ITE estimates
            seed=0,
            minutes=12.0,             # expected run time (laptop, one core), with the shredder run present
        ),
        "smoke": dict(attacker_train=0, k_max=8, decoder_hidden=256, decoder_epochs=20, mi_samples=300, mi_seeds=2,
                      minutes=0.5),
        "laptop": dict(),
        "paper": dict(attacker_train=0, seeds=5, k_max=200, decoder_epochs=30, mi_samples=10_000, mi_seeds=5,
                      minutes=30.0),
    },
    # notebooks/41_stobatch_algorithm.ipynb: StoBatch's pieces on real images, one small training run.
    "stobatch_algorithm": {
        "base": dict(
            dataset="fashion-mnist",  # pixels in [-1, 1], the network of the original code's MNIST/StoBatch.py
            max_train=10_000,         # training examples of the small run
            batch_size=500,           # m
            epsilon=8.0,              # total budget of the worked example (split evenly: eps_AE = eps2 = 4)
            epsilon_grid=(0.2, 1.0, 2.0, 8.0, 40.0, 200.0),  # budgets of the noise-scale table
            taylor_points=2_001,      # logits in the Taylor-vs-exact comparison
            epochs=2,                 # of the small run (each convention)
            minutes=2.0,              # expected run time (laptop, 2 cores)
        ),
        "smoke": dict(dataset="digits", max_train=0, batch_size=100, epochs=1, taylor_points=201, minutes=0.3),
        "laptop": dict(),
        "paper": dict(max_train=0, epochs=5, minutes=5.0),
    },
    # notebooks/42_stobatch_experiments.ipynb: StoBatch against epsilon, attack size and its baselines.
    "stobatch_experiments": {
        "base": dict(
            epsilons=(2.0, 8.0),      # total budgets (eps_AE = eps2 = eps / 2), principled and original
            switch_epsilon=8.0,       # budget of the one-switch-at-a-time runs
            unit_epsilons=(8.0, 40.0),  # principled runs with the code's Delta_x = 1
            minutes=1.0,              # with the runs' results present; training them: ~2 h of one core
        ),
        "smoke": dict(epsilons=(8.0,), unit_epsilons=(40.0,), minutes=1.0),
        "laptop": dict(),
        "paper": dict(epsilons=(0.2, 0.6, 1.0, 1.4, 2.0), switch_epsilon=2.0, unit_epsilons=(2.0,), minutes=5.0),
    },
    # dpbook.experiments.stobatch_designs: the sound design space on validation, the choice at seeds (chapter 42).
    "stobatch_designs": {
        "base": dict(
            epsilons=(2.0, 8.0),      # total budgets (replace-one, delta of settings("stobatch"))
            designs=(),               # names of stobatch_designs.DESIGNS; (): all of them
            seeds=3,                  # fresh seeds 1..3 at each choice (the seed-0 search run is not one)
            minutes=60.0,             # laptop, 2 processes (one per epsilon): the search and the seeds' evaluation
        ),
        "smoke": dict(epsilons=(8.0,), designs=("release PCA-32 Gaussian + RR labels (3/4 to inputs)",
                                                "public auto-encoder + DP-SGD above"), seeds=2, minutes=1.0),
        "laptop": dict(),
        "paper": dict(),
    },
    # dpbook.experiments.stobatch_experiment: StoBatch or a baseline, evaluated under attack.
    "stobatch": {
        "base": dict(
            method="stobatch",        # "stobatch", "pixeldp", "securesgd" or "nonprivate" (same network)
            dataset="fashion-mnist",  # pixels in [-1, 1]; mnist, cifar10 (28x28 centre crop), tinyimagenet (30 classes)
            max_train=0,              # training examples used (0: all)
            public=1_000,             # held out of the training split, public: the input coder, SecureSGD's r
            validation=5_000,         # held out of the training split (private): chapter 42 chooses designs on it
            n_validation=2_000,       # validation points scored (clean accuracy of the smoothed model)
            validation_draws=50,      # votes per validation point
            test=True,                # evaluate on the test set (False: validation only, for the design search)
            norm="group",             # "group" (per example) or "batch" (the code's BatchNorm; couples a batch)
            epochs=5,                 # passes over the partition; 0: the original's, stobatch.PAPER_EPOCHS[dataset]
            hyperparameters="preset",  # "preset" (as below) or "paper" (stobatch.PAPER_SETTINGS; TIN: ImageNet weights)
            batch_size=500,           # m: the disjoint batches and the noise calibration
            epsilon_autoencoder=1.0,  # eps_AE = eps1 (1 + 1/gamma_x + 1/gamma)
            epsilon2=1.0,             # eps2 of the output layer; total claimed epsilon = eps_AE + eps2
            variant="principled",     # "principled" (sound, per-example), "paper" (batch-shared) or "original"
            inputs="public_autoencoder",  # principled: "released" (per-example input noise) or "public_autoencoder"
            labels="dpsgd",           # principled: "randomized_response" or "dpsgd" (DP-SGD above the DP layer)
            input_mechanism="gaussian",  # released inputs: "gaussian" or "laplace" noise on the public code
            input_basis="pca",        # released inputs: "pca" (public), "pool" (2x2) or "pixels"
            input_dims=32,            # released inputs: principal directions kept ("pca")
            input_clip=0.0,           # released inputs: norm bound C of the code (0: median of the public codes)
            delta=1e-5,               # of the per-example designs (replace-one)
            clip_gradient=1.0,        # DP-SGD above the DP layer: per-example clipping norm C
            smoothing_std=0.5,        # Gaussian smoothing noise on pixels in [-1, 1] (public_autoencoder)
            autoencoder_epochs=5,     # DP-SGD designs: epochs of theta_1 on public or released images
            noise_reuse="",           # "" (the variant's), "per_batch" or "global_once"
            delta_x_convention="",    # "" (the variant's), "l1" (2 d_in) or "unit" (the code's 1)
            xi=1.5,                   # weight of the adversarial loss
            mu_max=0.3,               # training attack sizes mu ~ U(0, mu_max) (pixels in [-1, 1])
            attack_steps=3,           # iterations of the training attacks
            lr=1e-2,                  # Adam on theta_1 and theta_2
            baseline_lr=1e-3,         # Adam of PixelDP and the non-private network
            baseline_batch_size=256,  # their batch (SecureSGD: the expected Poisson batch)
            pixeldp_input_scale=0.1,  # PixelDP's Laplace b_x (pixels in [-1, 1])
            pixeldp_latent_scale=0.5,  # PixelDP's Laplace b_h after the first layer
            securesgd_epsilon=2.0,    # SecureSGD's DP-SGD target (epsilon, delta) (the code's TIN values)
            securesgd_delta=1e-5,
            securesgd_clip=1.0,       # per-example clipping norm C
            securesgd_lr=0.05,        # SGD with momentum 0.9
            hgm_epsilon_r=4.0,        # the HGM noise layer's robustness (eps_r, delta_r) and bound L (code)
            hgm_delta_r=0.05,
            hgm_bound=0.2,
            certify_mode="safe_max",  # certificate (dpbook.robustness.MODES); StoBatch's own: "paper_sum"
            n_test=500,               # test points evaluated (0: all)
            n_draws=200,              # Monte-Carlo votes per point
            eta=0.05,                 # failure probability of the certificate
            attacks=("fgsm", "ifgsm", "mim", "pgd"),  # test attacks (white-box, model's own labels)
            attack_sizes=(0.05, 0.1, 0.3),  # l_inf test attack sizes mu_a (pixels in [-1, 1])
            test_attack_steps=10,     # iterations of the test attacks
            eot=8,                    # noise draws per attack gradient (eot_study: more no longer lowers accuracy)
            eot_study=(1, 2, 4, 8, 16),  # draws per gradient compared (PGD, middle size); () to skip
            eot_points=200,           # test points of the EOT study
            l2_radii=(0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0),  # certified-accuracy curves (pixels in [-1, 1])
            linf_radii=(0.0, 0.005, 0.01, 0.02, 0.05, 0.1),
            seed=0,                   # splits, initialisation, schedule and attacks (never the DP noise)
            minutes=6.0,              # laptop, one thread: ~2 min training, ~4 min evaluation (original: ~15)
        ),
        "smoke": dict(dataset="digits", public=100, validation=200, n_validation=200, validation_draws=10,
                      input_dims=16, autoencoder_epochs=1, eot_study=(1, 2), eot_points=20, epochs=2, batch_size=100,
                      epsilon_autoencoder=4.0,
                      epsilon2=4.0, attack_steps=2, n_test=40, n_draws=20, attacks=("fgsm", "pgd"),
                      attack_sizes=(0.1,), test_attack_steps=2, minutes=0.3),
        "laptop": dict(max_train=20_000),
        "paper": dict(dataset="mnist", epochs=0, hyperparameters="paper", epsilon_autoencoder=0.1, epsilon2=0.1,
                      n_test=1_000, n_draws=1_000, attack_sizes=(0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6),
                      test_attack_steps=100, eot=8, minutes=600.0),
    },
    # notebooks/90_privacy_auditing.ipynb: the audit statistics, then audits of DP-SGD, GEP and StoBatch.
    "privacy_auditing": {
        "base": dict(
            epsilons=(2.0, 8.0),      # budgets audited (settings("audit") for everything else)
            confidence=0.95,          # of every lower bound in the chapter
            rr_epsilons=(1.0, 4.0),   # randomized-response mechanisms of known epsilon
            rr_canaries=(100, 1_000, 10_000, 100_000),  # canaries of the one-run demonstration
            paper_setup="svhn",       # the paper setting where the original GEP accounting is furthest off (eps 8)
            paper_setup_repeats=5,    # audited runs there (12,087 steps each)
            minutes=2.0,              # with the audits' results present; running them: ~20 min (one thread)
        ),
        "smoke": dict(epsilons=(8.0,), rr_canaries=(100, 1_000), paper_setup_repeats=1, minutes=0.5),
        "laptop": dict(),
        "paper": dict(minutes=5.0),
    },
    # notebooks/91_audit_report.ipynb: every paper's claims against the results files.
    "audit_report": {
        "base": dict(
            minutes=1.0,              # reads finished results (runs any that are missing, at this profile's size)
        ),
        "smoke": dict(minutes=2.0),
        "laptop": dict(),
        "paper": dict(),
    },
    # dpbook.experiments.audit_experiment: an empirical lower bound on epsilon for one configuration.
    "audit": {
        "base": dict(
            target="gep",             # "dpsgd", "gep" (the gep experiment's mechanism) or "stobatch"
            accounting="joint",       # GEP/DP-SGD: "joint" (sound) or "original" (GEP's code)
            setup="gep",              # DP-SGD/GEP: "gep" (settings("gep") of the profile) or a paper setup ("svhn")
            epsilon=8.0,              # the target budget of the audited configuration
            delta=1e-5,               # delta of the claim and of the bounds
            variant="principled",     # StoBatch: "principled" or "original"
            n_canaries=1_000,         # gradient canaries per audited run (DP-SGD, GEP)
            repeats=20,               # audited runs (each a checkpoint): repeats x n_canaries trials
            stobatch_trials=300,      # StoBatch: whole training runs per canary kind (label, input), one coin each
            stobatch_examples=400,    # StoBatch: digits images of each audited training run
            confidence=0.95,          # of the lower bounds
            seed=0,                   # canary coins and the auditor's sampling (not the DP noise)
            minutes=3.0,              # expected run time (laptop, one thread)
        ),
        "smoke": dict(n_canaries=200, repeats=2, stobatch_trials=20, stobatch_examples=200, minutes=0.5),
        "laptop": dict(),
        "paper": dict(repeats=200, stobatch_trials=4_000, minutes=120.0),
    },
    # dpbook.experiments.baseline: the non-private reference network of a dataset.
    "baseline": {
        "base": dict(
            dataset="fashion-mnist",  # any name of dpbook.data.DATASETS
            model="small-cnn",        # any name of dpbook.models.MODELS
            epochs=8,                 # passes over the training split
            batch_size=128,           # examples per optimiser step
            lr=1e-3,                  # Adam learning rate
            weight_decay=0.0,         # Adam weight decay
            validation=5_000,         # examples held out of the training split for model selection
            max_train=0,              # use at most this many training examples (0: all)
            scale="standard",         # pixel scaling: "unit" [0,1], "symmetric" [-1,1], "standard" z-score
            seed=0,                   # initialisation and batch order (not a privacy seed: nothing is private)
            minutes=2.5,              # expected run time (laptop: 8 epochs of ~16 s on 2 cores)
        ),
        "smoke": dict(dataset="digits", epochs=3, batch_size=64, validation=200, minutes=0.1),
        "laptop": dict(),
        "paper": dict(epochs=30, minutes=3.0),
    },
}
