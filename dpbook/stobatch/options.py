"""StoBatch's hyperparameters and switches (:class:`StoBatchOptions`), the original code's settings per
dataset (:data:`PAPER_SETTINGS`, :data:`PAPER_EPOCHS`) and the switches' allowed values.

Budgets are in nats (pure epsilon-DP, delta = 0), batch sizes in examples, attack sizes in l_inf units of
inputs scaled to [-1, 1]. Every switch has the principled default first and the original code's behaviour
second; :meth:`StoBatchOptions.original` sets them all back (the table "differences from the original code"
of ``book/stobatch.md`` lists them, ``notebooks/42_stobatch_experiments.ipynb`` measures what each costs).
The settings come from the original TensorFlow code, ``haiphanNJIT/StoBatch`` on GitHub:
``MNIST/StoBatch.py``, ``StoBatchCIFAR10/StoBatch_cifar10.py`` and
``StoBatchTinyImageNet/StoBatch_resnet_pretrain.py`` (with its ``parameter_settings.txt``).

Switches that void the stated guarantee warn once (:mod:`dpbook.guarantees`); :func:`unsound_modes` lists
the reasons for a result file.

Example:
    >>> StoBatchOptions().release, unsound_modes(StoBatchOptions())
    ('per_example', [])
"""
from __future__ import annotations

from dataclasses import dataclass

from .. import checks, guarantees, models
from .release import INPUT_BASES, INPUT_MECHANISMS

RELEASES = ("per_example", "batch_shared")
INPUTS = ("released", "public_autoencoder")
LABELS = ("randomized_response", "dpsgd")
NOISE_REUSE = ("per_batch", "global_once")
FM_NOISE_FORMS = ("linear", "abs_mean")
TAYLOR_ON = ("logits", "probs")
AE_LOSSES = ("paper_second_order", "paper_first_order", "code_abs")
ADV_INPUTS = ("noisy_source", "clean_no_noise")
DELTA_X_CONVENTIONS = ("l1", "unit")
THETA1_CONSTRAINTS = ("project", "none")
THETA2_OPTIMIZERS = ("adam", "sgd")


@dataclass
class StoBatchOptions:
    """Hyperparameters and switches. Defaults: the principled variant and a toy setting for sklearn's 8x8
    digits (:func:`dpbook.models.digits_network`; 7 disjoint batches of 200 of the 1,437 training images),
    with Adam at 1e-2: at 1e-3 the 3 steps per epoch learn too slowly.

    Budgets (Phan et al. 2020, eps = eps1 + eps1/gamma_x + eps1/gamma + eps2): ``epsilon_autoencoder`` =
    eps1 (1 + 1/gamma_x + 1/gamma) (the code's ``epsilon2``) and ``epsilon2`` (the code's ``epsilon3``).
    ``batch_size`` is m, ``xi`` the adversarial weight, ``trainers`` the batch pairs per step (gradients
    averaged), ``mu_max`` the largest training attack size (mu ~ U(0, mu_max)).

    **What is released** (``release``): ``"per_example"`` (sound, the default; :mod:`dpbook.stobatch.release`)
    releases every example's input and label once with noise of its own, and trains on the release; the run is
    (eps_AE + eps2, ``delta``)-DP under replace-one (:mod:`dpbook.stobatch.accounting`). ``"batch_shared"`` is
    the paper's mechanism (noise shared by a batch's examples, labels unprotected in the hidden layers; voids
    the guarantee, warns), which the switches below configure. Per-example designs:

    * ``inputs``: ``"released"`` (Gaussian or Laplace ``input_mechanism`` on the public code of
      ``input_basis`` with ``input_dims`` directions, clipped to ``input_clip`` (0: the public median norm);
      theta_1 learns on the released images) or ``"public_autoencoder"`` (theta_1 learns on the public images
      only; the private images reach the network only through DP-SGD);
    * ``labels``: ``"randomized_response"`` at eps2 (everything above is post-processing) or ``"dpsgd"``
      (theta_2 trained by DP-SGD, gradients clipped to ``clip_gradient``, calibrated so that the whole run
      spends eps_AE + eps2);
    * ``smoothing_std``: Gaussian noise on the input (pixels in [-1, 1]) at inference and in DP-SGD's
      training, for the l2 certificate; released inputs are smoothed at the release's own noise instead.

    Switches of the paper's mechanism, principled default first, the original's second (``book/stobatch.md``,
    "differences from the original code"):

    * ``noise_reuse``: ``"per_batch"`` (independent noise per disjoint batch, fixed across epochs) or
      ``"global_once"`` (one draw for every batch and epoch; voids the guarantee, warns);
    * ``noise_seed``: None (OS entropy) or a public seed (the code's 1024: ``np.random.seed(1024)`` in
      ``DataSetParallel`` of ``StoBatchCIFAR10/cifar10_read.py`` precedes its noise draws);
    * ``channel_shared_input_noise``: False or True (one value per pixel copied to all channels);
    * ``fm_noise_form``: ``"linear"`` (-sum chi * W, the functional mechanism, as ``MNIST/StoBatch.py``) or
      ``"abs_mean"`` (+mean|chi * W|, the CIFAR-10 and Tiny ImageNet code);
    * ``taylor_on``: ``"logits"`` or ``"probs"`` (the Tiny ImageNet code expands around softmax probabilities);
    * ``ae_loss``: ``"paper_second_order"``, ``"paper_first_order"`` or ``"code_abs"``
      (``EncLayer.get_train_ops2`` of the code's ``mlp.py``);
    * ``adv_input``: ``"noisy_source"`` (x_adv crafted from x_bar, as the paper says: post-processing) or
      ``"clean_no_noise"`` (crafted from clean x against a noisy surrogate, fed with zero input noise);
    * ``delta_x_convention``: ``"l1"`` (Delta_x = 2 d_in, replace-one l1 sensitivity of x in [-1, 1]^d_in) or
      ``"unit"`` (Delta_x = 1, the code's ``_gamma_x = Delta2 / L``; voids the guarantee, warns);
    * ``beta_includes_channels``: False (beta = H' W', the code) or True (beta = H' W' C_out);
    * ``theta1_constraint``: ``"project"`` (keep sigma_max(theta_1) <= the value gamma uses) or ``"none"``
      (the code: sigma_max at initialisation only; :func:`dpbook.stobatch.privacy_report` re-checks it);
    * ``train_theta1_with_cls_loss``: False or True (Tiny ImageNet code).
    """

    epsilon_autoencoder: float = 1.0
    epsilon2: float = 1.0
    release: str = "per_example"
    inputs: str = "released"
    labels: str = "randomized_response"
    input_mechanism: str = "gaussian"
    input_basis: str = "pca"
    input_dims: int = 32
    input_clip: float = 0.0
    delta: float = 1e-5
    clip_gradient: float = 1.0
    smoothing_std: float = 0.5
    batch_size: int = 200
    xi: float = 1.5
    trainers: int = 1
    micro_batches: int = 1   # gradient accumulation inside a batch (TIN: 4,500 = 20 x 225)
    mu_max: float = 0.3
    attack_steps: int = 5
    clip: tuple[float, float] = (-1.0, 1.0)
    lr_theta1: float = 1e-2
    lr_theta2: float = 1e-2
    theta2_optimizer: str = "adam"
    partition_seed: int = 1024
    noise_reuse: str = "per_batch"
    noise_seed: int | None = None
    channel_shared_input_noise: bool = False
    fm_noise_form: str = "linear"
    taylor_on: str = "logits"
    ae_loss: str = "paper_second_order"
    adv_input: str = "noisy_source"
    delta_x_convention: str = "l1"
    beta_includes_channels: bool = False
    theta1_constraint: str = "project"
    sigma_max_bound: float | None = None   # None: sigma_max(theta_1) of the weights at prepare()
    train_theta1_with_cls_loss: bool = False

    def __post_init__(self):
        where = "StoBatchOptions"
        for name, allowed in (("release", RELEASES), ("inputs", INPUTS), ("labels", LABELS),
                              ("input_mechanism", INPUT_MECHANISMS), ("input_basis", INPUT_BASES),
                              ("noise_reuse", NOISE_REUSE), ("fm_noise_form", FM_NOISE_FORMS),
                              ("taylor_on", TAYLOR_ON), ("ae_loss", AE_LOSSES), ("adv_input", ADV_INPUTS),
                              ("delta_x_convention", DELTA_X_CONVENTIONS),
                              ("theta1_constraint", THETA1_CONSTRAINTS), ("theta2_optimizer", THETA2_OPTIMIZERS)):
            checks.one_of(getattr(self, name), allowed, name, where)
        if self.release == "batch_shared" or self.inputs == "released":
            checks.positive(self.epsilon_autoencoder, "epsilon_autoencoder", where)
        else:
            checks.non_negative(self.epsilon_autoencoder, "epsilon_autoencoder", where)
        checks.positive(self.epsilon2, "epsilon2", where)
        checks.check(not (self.inputs == "public_autoencoder" and self.labels == "randomized_response"), "inputs",
                     where, "'released' when labels='randomized_response'", self.inputs,
                     "With randomized-response labels the private images must be released too; use "
                     "labels='dpsgd' to train on them privately.")
        checks.delta(self.delta, where)
        for name in ("batch_size", "trainers", "micro_batches"):
            checks.check(getattr(self, name) >= 1, name, where, "an integer >= 1", getattr(self, name))
        checks.non_negative(self.xi, "xi", where)
        _warn(self)

    @classmethod
    def original(cls, **overrides) -> "StoBatchOptions":
        """The original CIFAR-10 code's behaviour (``StoBatchCIFAR10/StoBatch_cifar10.py``). For Tiny
        ImageNet's add ``taylor_on="probs", train_theta1_with_cls_loss=True``; for MNIST's
        ``fm_noise_form="linear"``. Warns (:class:`dpbook.guarantees.UnsoundModeWarning`): its noise comes
        from a public seed and is reused by every batch."""
        code = dict(release="batch_shared", noise_reuse="global_once", noise_seed=1024, channel_shared_input_noise=True,
                    fm_noise_form="abs_mean", ae_loss="code_abs", adv_input="clean_no_noise",
                    delta_x_convention="unit", theta1_constraint="none")
        return cls(**{**code, **overrides})


def _modes(options: StoBatchOptions) -> list[str]:
    """Keys of :data:`dpbook.guarantees.UNSOUND_MODES` that ``options`` select."""
    modes = []
    if options.release == "batch_shared":
        modes.append("release='batch_shared'")
    if options.release == "batch_shared" and options.noise_reuse == "global_once" and options.noise_seed is not None:
        modes.append("variant='original'")   # one draw from a public seed, reused: whoever has the seed has it
    if options.release == "batch_shared" and options.noise_reuse == "global_once":
        modes.append("noise_reuse='global_once'")
    if options.release == "batch_shared" and options.delta_x_convention == "unit":
        modes.append("delta_x_convention='unit'")
    return modes


def _warn(options: StoBatchOptions) -> list[str]:
    """Warn once for each mode of :func:`_modes`; returns the reasons."""
    return [guarantees.warn_unsound(mode) for mode in _modes(options)]


def unsound_modes(options: StoBatchOptions, model=None) -> list[str]:
    """Why a run with ``options`` (and ``model``, if given) has no guarantee: the reasons
    :func:`dpbook.guarantees.warn_unsound` gives, for :func:`dpbook.guarantees.record`; ``[]`` when sound.

    ``noise_reuse="global_once"`` (with a public ``noise_seed`` it is the original variant's noise),
    ``delta_x_convention="unit"``, and a ``model`` normalised with batch statistics
    (:func:`dpbook.models.unsound_modes`).
    """
    return _warn(options) + (models.unsound_modes(model) if model is not None else [])


#: The code's settings per dataset, as :class:`StoBatchOptions` keywords (``MNIST/StoBatch.py``,
#: ``StoBatchCIFAR10/StoBatch_cifar10.py``, ``StoBatchTinyImageNet/StoBatch_resnet_pretrain.py``); digits is
#: the toy setting of :class:`StoBatchOptions`' defaults (the tests and the smoke profile).
PAPER_SETTINGS = {
    "digits": dict(batch_size=200, xi=1.5, mu_max=0.3, attack_steps=5, lr_theta1=1e-2, lr_theta2=1e-2),
    "mnist": dict(batch_size=2499, xi=1.0, mu_max=1.0, attack_steps=100, lr_theta1=1e-4, lr_theta2=1e-4,
                  epsilon_autoencoder=0.1, epsilon2=0.1),
    "cifar10": dict(batch_size=1851, xi=1.5, mu_max=0.5, attack_steps=3, lr_theta1=5e-2, lr_theta2=5e-2,
                    theta2_optimizer="sgd", epsilon_autoencoder=1.0, epsilon2=1.0),
    "tinyimagenet": dict(batch_size=4500, xi=1.5, mu_max=0.1, attack_steps=10, lr_theta1=1e-2, lr_theta2=1e-2,
                         epsilon_autoencoder=4.0, epsilon2=1.0, micro_batches=20),
}
PAPER_EPOCHS = {"digits": 40, "mnist": 200, "cifar10": 600, "tinyimagenet": 350}
