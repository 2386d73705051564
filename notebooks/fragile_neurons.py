# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Fragile neurons: nodal dropout, adversarial targeting, compress/amplify
#
# Pravin, Martino, Nicosia and Ojha {cite}`pravin2021fragile` look at the first convolutional layer of an image
# classifier one channel ("neuron") at a time. Their abstract makes three claims: removing single channels
# (*nodal dropout*) reveals *fragile* and *robust* neurons; an *adversarial targeting algorithm* shows that FGSM
# attacks concentrate on particular neurons, correlated with fragility; and *compressing the features of robust
# neurons while amplifying fragile ones proportionally* makes the network more robust. All their numbers are FGSM
# numbers on MNIST and CIFAR-10.
#
# **What is the paper's, and what is the book's.** The paper's formulas, architectures and radii were not
# published, and no code for it exists. What we know, sentence by sentence:
#
# - *Nodal dropout of the first convolutional layer*, *an adversarial targeting algorithm*, *FGSM*, *MNIST and
#   CIFAR-10*, and the compress/amplify idea: the paper's abstract.
# - A fragile neuron is one whose removal lowers *clean* test accuracy, and fragility is tracked over training
#   epochs: Pravin's thesis abstract. We therefore score fragility on clean accuracy and show the FGSM drop beside it.
# - FGSM in *normalized* input space, *unclipped*, on *every* test image, with radii per model (ResNet-18: 0.38 on
#   MNIST, 0.015 on CIFAR-10, in units of their normalization's standard deviation 0.3081 and 0.5); ResNet-18 from
#   torchvision trained with Adam (learning rate $10^{-3}$, batch 100): the authors' later code for a follow-up
#   paper. We use these conventions for "the authors' FGSM". Those radii were set for ResNet-18; reusing them for
#   the book's LeNetLike and AlexLike (the `laptop` and `smoke` profiles) is the book's choice, and since an FGSM
#   gain depends strongly on the radius we also measure it at half and twice their radius (`authors_factors`).
# - The book's reading: dropping channel $j$ multiplies the first convolution's output channel $j$ by 0; the
#   targeting measure is, per channel, the change $\lVert a_j(x+\delta) - a_j(x)\rVert_2$ of its activation map
#   under the FGSM perturbation $\delta$, and per image the channel that changes most; compress/amplify multiplies
#   channel $j$ by $1 + s\,u_j$, where $u_j \in [-1, 1]$ is its fragility centred on the mean and divided by the
#   largest deviation, with one strength $s$ (0 leaves the network unchanged). The code is in
#   {mod}`robustness_book.defenses.fragile_neurons`. In ResNet-18 (the `paper` profile) that scale acts before the
#   first batch norm: a dropped channel then leaves batch norm as a constant offset, not as zero, and
#   compress/amplify changes the normalized feature by an affine map rather than a factor. LeNetLike and AlexLike
#   have no batch norm there, so the scale is a plain rescaling of what the next layer sees.
#
# **Beyond the paper.** Rescaling channels rescales gradients, which can make FGSM look worse without making the
# network harder to fool. So the rescaled network also faces the book's adaptive worst case (many-step gradient
# attacks, the gradient-free Square attack, and PGD transferred from the unmodified network), with the evaluation
# health checks of {cite}`carlini2019evaluating`; we ask whether fragility is stable across training seeds; and
# every choice the defense makes is made on held-out training images, never on the test images it is scored on.

# %% tags=["parameters"]
profile = "auto"  # smoke | laptop | paper | auto (paper on a GPU, else laptop)
datasets = None  # data sets the chapter runs on: mnist, fashion_mnist, cifar10
model = None  # architecture (robustness_book.models) per data set (per data set)
recipe = None  # training recipe: zoo (the book's shared models) or authors (Adam lr 1e-3, batch 100, the authors' later code) (per data set)
train_size = None  # training images (the first N) (per data set)
epochs = None  # training epochs (per data set)
n_val = None  # held-out training images after the first train_size (scores and the strength are chosen on them) (per data set)
n_fragility = None  # held-out images for fragility and targeting (the first N of n_val) (per data set)
n_test = None  # test images for accuracy and the FGSM curves (the first N) (per data set)
authors_eps = None  # FGSM radius of the authors, in their normalized units (times their std gives pixels) (per data set)
authors_factors = None  # multiples of authors_eps of the unclipped authors'-FGSM sweep (must contain 1)
eps_grid = None  # L∞ radii on [0, 1] pixels of the book's clipped FGSM curves (the authors' radius in pixels is added) (per data set)
strengths = None  # compress/amplify strengths tried (0 leaves the model unchanged)
score = None  # fragility score that drives compress/amplify: clean (the definition of the thesis) or fgsm
clean_budget = None  # largest validation clean-accuracy loss a chosen strength may cost (per data set)
evolution = None  # measure the second copy's (seed + 1) fragility during its training (it is trained either way: the transfer check's source) (per data set)
evolution_every = None  # epochs between two fragility measurements of the second copy (per data set)
n_adaptive = None  # test images for the adaptive worst case (the first N) (per data set)
eps = None  # threat radius (L∞, [0, 1] pixels) of the adaptive worst case, the health checks and the verdict (per data set)
pgd_steps = None  # steps of the PGD members of the worst case
restarts = None  # random restarts of the PGD members
square_queries = None  # queries per image of the Square member
health_steps = None  # PGD steps of the health checks
batch_size = None  # attack batch size
seed = None  # random seed (the second copy uses seed + 1)

# %% tags=["remove-cell"]
import matplotlib.pyplot as plt
from IPython.display import Markdown, display

from robustness_book.chapters import fragile_neurons as chapter
from robustness_book.config import resolve_notebook
from robustness_book.runtime import seed_everything

cfg = resolve_notebook(chapter.SPEC, globals())
seed_everything(cfg.seed)
run = chapter.Run(cfg)

# %% tags=["remove-input"]
display(Markdown(cfg.markdown()))

# %% [markdown]
# ## The networks
#
# The paper evaluates "state-of-the-art" classifiers; the authors' later code trains torchvision's ResNet-18 from
# scratch, which is what the `paper` profile does (with Adam, as they did). On a laptop the chapter uses the book's
# shared models instead, so nothing is trained twice across chapters: LeNetLike on MNIST and AlexLike on CIFAR-10
# from the model zoo (`python -m robustness_book models`), the networks of the JumpReLU chapter. Their first layers have
# 10 and 64 channels; ResNet-18's has 64.
#
# The `n_val` training images after the first `train_size` are held out: no network trains on them, and they are
# the only images used to score channels and to choose the defense's strength. A second copy of the network
# trains from seed + 1 (it is the source of the transfer health check); with `evolution`, its fragility is
# measured every `evolution_every` epochs during training.

# %%
chapter.train_all(run)
display(Markdown(chapter.training_table(run.results())))

# %% [markdown]
# ## Nodal dropout: which neurons are fragile?
#
# Each first-layer channel is dropped in turn, on a copy of the network (the original is untouched), and the copy
# is scored on the first `n_fragility` held-out images: clean accuracy, which defines fragility, and accuracy under
# the authors' FGSM crafted on the dropped copy itself, beside it. Both networks answer the same images, so each
# channel gets a paired test. It is *fragile* when an exact McNemar test on the images only one of the two gets
# right finds a loss (Holm-adjusted over the layer's channels). It is *robust* only when the loss is shown to be
# small: the 95% interval of the loss lies within a small margin around 0 (stated below), an equivalence test. Any other
# channel is *undetermined*: a channel whose loss was not detected is not thereby robust. The last column gives the
# smallest loss these images could show for one channel, in the best case.

# %% tags=["remove-input"]
display(Markdown(f"The margin of the robust test: ±{100 * chapter.ROBUST_MARGIN:g} points of clean accuracy; "
                 f"the level of the fragile test: {chapter.ALPHA:g}, Holm-adjusted."))

# %%
chapter.fragility_all(run)
display(Markdown(chapter.fragility_table(run.results())))

# %% [markdown]
# The bars show each channel's fragility, most fragile first: how many points of accuracy the network loses
# without it, on clean images and under FGSM. If a few channels carry the network, a few bars tower over the rest.
# A negative bar is a channel whose removal *helps*.

# %% mystnb={"figure": {"caption": "Per first-layer channel, the accuracy lost (points) when it is dropped: clean (the fragility score) and under the authors' FGSM, on held-out images; channels ordered by clean fragility.", "name": "fig-fragile-bars"}}
chapter.fragility_figure(run.results())
plt.show()

# %% [markdown]
# ## Adversarial targeting: where does FGSM land?
#
# For each held-out image, the authors' FGSM perturbation $\delta$ is pushed through the first layer, and we
# measure how much each channel's activation map changes. At this layer the change is linear in $\delta$ (the bias
# cancels), so it measures how strongly each filter answers the attack's sign pattern; and it grows with the
# filter's norm, as fragility does. A positive correlation between the raw change and fragility is therefore
# expected with no targeting at all. The control: the same measurement under a perturbation of random signs and
# the same radius. Per channel, the *excess* is FGSM's change divided by the random one, minus 1: how much more
# FGSM moves the channel than chance does, which does not depend on the filter's norm. The claim is judged on the
# excess: Spearman's rank correlation between the excess and the fragility, whose p-value comes from 10,000
# random permutations (exact enough for the 10 to 64 channels of a first layer, where the usual t approximation is
# not). The raw change's correlation is shown beside it. The same table holds the correlation of the fragility
# of two independently trained copies, where the profile follows the copy's training (`evolution`): a property of
# *neurons* should not depend on the seed. Channel $j$ of one network has no reason to be channel $j$ of another, so the copy's channels are
# first matched to the first network's (the assignment that maximizes the total cosine similarity of their
# filters).

# %%
chapter.targeting_all(run)
display(Markdown(chapter.correlation_table(run.results())))

# %% mystnb={"figure": {"caption": "Left: the share of held-out images whose most-changed first-layer channel under the authors' FGSM is each channel, channels in fragility order. Right: the mean activation change per channel against its clean fragility, with Spearman's ρ and its permutation p-value.", "name": "fig-fragile-targeting"}}
chapter.targeting_figure(run.results())
plt.show()

# %% [markdown]
# ## Fragility during training
#
# The thesis follows fragile neurons as the network trains. The second copy's fragility, measured after each
# checkpoint epoch on the same held-out images, shows whether the ranking settles early or keeps moving; the five
# channels most fragile at the end are drawn thick.

# %% mystnb={"figure": {"caption": "Clean fragility (accuracy lost when the channel is dropped) of each first-layer channel of the second copy, after each measured epoch; the five most fragile at the end are highlighted.", "name": "fig-fragile-evolution"}}
chapter.evolution_figure(run.results())
plt.show()

# %% [markdown]
# ## Compress and amplify
#
# The proposed defense rescales the first layer's channels by their fragility score (`score`): fragile channels up,
# robust ones down, in proportion, by the strength $s$. For every strength of the grid we measure held-out clean
# accuracy and authors'-FGSM accuracy, and choose, before looking at any test number, the strength with the best
# held-out FGSM accuracy among those costing at most `clean_budget` of clean accuracy (ties go to the smaller
# strength, so the unmodified network wins unless a strength helps). Then the test images: clean accuracy, the
# authors' FGSM, and the book's FGSM, which clips to $[0, 1]$ and is measured in pixels, over a grid of radii.
#
# The two FGSMs differ in two ways. The authors' radius (`authors_eps`) is in normalized units, far below the
# usual 8/255 in pixels on CIFAR-10 (converted below). And their examples are not clipped, so they can leave the
# range of valid images; the book's cannot.

# %% tags=["remove-input"]
display(Markdown("The authors' radius in pixels: " + "; ".join(
    f"{d}: {cfg.authors_eps[d]:g} normalized = {chapter.authors_eps_pixels(cfg, d):.4f} "
    f"({255 * chapter.authors_eps_pixels(cfg, d):.1f}/255)" for d in cfg.datasets) + "."))

# %%
chapter.strength_all(run)
display(Markdown(chapter.strength_table(run.results())))

# %% mystnb={"figure": {"caption": "Left: test accuracy under the book's clipped FGSM against the radius, one line per compress/amplify strength. Right: clean and authors'-FGSM test accuracy against the strength; the dashed line marks the strength chosen on held-out images.", "name": "fig-fragile-strength"}}
chapter.strength_figure(run.results())
plt.show()

# %% [markdown]
# ## Beyond FGSM: the adaptive worst case
#
# Rescaling is differentiable, so nothing stops a gradient attacker from seeing through it; but it changes the
# scale of the gradients, which is exactly what fools a single-step attack. The test below runs the toolkit's worst
# case on the first `n_adaptive` test images: the toolkit's default ensemble
# ({func}`robustness_book.evaluate.members.default_members`: many-step gradient attacks, then the gradient-free Square
# attack; the table names each member), on the unmodified network and, when validation chose a strength above 0, on the
# rescaled one, which also faces PGD examples crafted on the unmodified network and transferred. Each image counts
# as robust only if it survives them all. The radii are the authors' FGSM radius (now as a clipped threat model,
# where the book's clipped FGSM above was also measured, on the same images) and the threat radius `eps` (by
# default the data set's standard one, where the unmodified network is expected at the floor). The last
# column counts, per member, the images it fooled that the members before it had missed; *smaller ε* counts the
# images already fooled at a smaller radius. At the authors' radius, AutoAttack (standard) then attacks the images
# the rescaled network's worst case left standing; its row shows the accuracy left and AutoAttack's own
# reliability flags.

# %%
chapter.adaptive_all(run)
display(Markdown(chapter.worst_case_table(run.results())))

# %% [markdown]
# ## Evaluation health
#
# The checklist of {cite}`carlini2019evaluating` on the network the defense chose (the rescaled one, or the
# unmodified one when validation kept strength 0) at the threat radius: accuracy at radius zero equals clean
# accuracy, accuracy never rises with the radius and reaches chance at a very large one, more steps barely help,
# gradients are not zero, the gradient-free attack adds almost nothing to the gradient ones, and transferred
# examples (from the unmodified network, or from the second copy, another seed of the same recipe) fool less
# often than white-box ones. A failed
# row is shown, never hidden. Each data set's checks form their own table, under the network and strength they check.

# %%
chapter.health_all(run)
display(Markdown(chapter.health_tables(run.results())))

# %% tags=["remove-cell"]
saved = run.saved()

# %% [markdown]
# ## Results and verdict
#
# Everything above is one results file; the verdict is computed from it as read back, by
# {func}`robustness_book.chapters.fragile_neurons.verdict`. Per data set it checks four claims, never by eye, each with
# one of three outcomes (holds, does not hold, inconclusive with its reason): whether some channels are fragile
# and others robust (the paired tests above); whether FGSM's excess over random signs is rank-correlated with
# fragility (a permutation p-value; it does not hold when the correlation's interval excludes a moderate one);
# and the two compress/amplify claims. Both compare the chosen strength with strength 0 on the same images
# (an exact McNemar test on the images only one of them gets right, Holm-adjusted over the data sets): the paper's
# claim under the authors' FGSM at their radius, and its survival under the adaptive worst case at the same radius,
# clipped, the radius the chapter measures nearest theirs; the threat radius is reported beside the verdict but not
# judged (the paper makes its claim at the authors' radius). A positive must be confirmed by
# AutoAttack on the survivors and by the gating health checks; "an FGSM artefact" is said only when that clipped
# FGSM showed a significant gain over strength 0 and the worst case is significantly below the rescaled network's
# own clipped FGSM accuracy at the same radius on the same images, naming the attack that removed the gain. The same FGSM comparison at the other multiples of the authors' radius
# is reported beside the claim. A network the defense chose that is broken (near chance on clean test images; the
# rule is stated under the verdict) gets no robustness verdict at all.

# %%
display(Markdown(chapter.verdict(saved)))
