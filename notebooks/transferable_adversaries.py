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
# # Transferable adversaries and superimposition training
#
# Seiler, Trautmann and Kerschke {cite}`seiler2020enhancing` start from an observation about black-box attacks:
# adversarial examples crafted on one network often fool another, but mostly the *single-step* ones (FGSM
# {cite}`goodfellow2015explaining`); *multi-step* ones, stronger against the network they were made on, usually
# transfer less. Their abstract makes three claims: (i) a new method generates strong multi-step adversaries that
# transfer frequently between models; (ii) a large set of such adversaries serves to assess selected defenses;
# (iii) a new, simple defense that needs only one additional forward pass per training step performs comparably
# to established defenses.
#
# **What is the paper's, and what is the book's.** Only the abstract could be read; no code of the authors is
# public. What we know, and what we chose:
#
# - *The generator* of claim (i) is unknown. It is replaced here by the published transfer attacks it would be
#   measured against: PGD {cite}`madry2018towards` returning its last iterate, MI-FGSM (momentum,
#   {cite}`dong2018boosting`), input diversity (random resize and pad at each step, {cite}`xie2019improving`),
#   and PGD on an ensemble of surrogate networks {cite}`liu2017delving`, alone and combined. Whatever is said
#   below about claim (i) is said about these stand-ins, not about the paper's method.
# - *The defense* of claim (iii) is taken from the only implementation found, a third-party TensorFlow one:
#   each training image $x$ is blended with another image $x_r$ of the batch,
#   $x_{\text{imp}} = (1-a)\,x + a\,x_r$, and the loss is
#   $\mathrm{CE}(y, f(x)) + \lambda\,\mathrm{KL}\big(f(x)\,\|\,f(x_{\text{imp}})\big)$ with $\lambda = 10$ and
#   $a \sim \mathrm{Beta}(2, 10)$. That code meant to draw $a$ per batch but in fact drew it once (a NumPy call
#   inside a traced TensorFlow function), so both readings run here: $a$ resampled per batch, and $a$ fixed. These
#   are that implementation's settings, unverified against the paper
#   ({class}`robustness_book.defenses.SuperimpositionLoss`).
# - *The established defenses* are that implementation's comparison set: FGSM adversarial training (half clean,
#   half FGSM) and defensive distillation at temperature 100 {cite}`papernot2016distillation`. We add PGD
#   adversarial training as the reference every defense is measured against today.
# - Data sets, architectures, radii and the size of the paper's adversary set are unknown: we use MNIST and
#   CIFAR-10 at the book's standard L∞ radii (0.3 and 8/255, the parameter `eps`) and the book's shared networks.
#
# **Beyond the paper.** Surviving transferred examples is not robustness: a defense that only disturbs the
# gradients of a surrogate fools the transfer attack, not an attacker who sees the defended network. So every
# defense also faces the book's adaptive white-box worst case, the evaluation health checks of
# {cite}`carlini2019evaluating` are run on the paper's defense, and the verdict is computed from the numbers.

# %% tags=["parameters"]
profile = "auto"  # smoke | laptop | paper | auto (paper on a GPU, else laptop)
datasets = None  # data sets the chapter runs on: mnist, fashion_mnist, cifar10
eps = None  # L∞ threat radius on [0, 1] pixels: of the transfer matrix, the adversary set, the adversarial training and every score (per data set)
seeds = None  # training seeds of the zoo architecture in the model pool (the first gives the reference model, never a surrogate of the adversary set) (per data set)
second_arch = None  # second architecture of the model pool (robustness_book.models) (per data set)
second_seeds = None  # training seeds of the second architecture (per data set)
second_lr = None  # learning rate of the second architecture (the rest of the recipe is the zoo one) (per data set)
n_transfer = None  # held-out training images (after the pool training images) for the transfer matrix and the fragility scores (per data set)
generators = None  # generators of the transfer matrix
steps = None  # iterations of the multi-step generators
momentum = None  # decay factor of MI-FGSM
diversity = None  # probability of input diversity at each step of the diversity generators
premise_radii = None  # fractions of the threat radius of the premise sweep (one source, one target; FGSM, PGD and MI-FGSM)
premise_steps = None  # iterations of PGD and MI-FGSM in the premise sweep, at the threat radius
set_generator = None  # generator of the adversary set: best (highest held-out fooling rate) or one of the generators
n_set = None  # test images turned into the adversary set (the first N) (per data set)
n_set_train = None  # training images turned into a training adversary set (the first N; 0 for none), for readers who train on transferred examples (per data set)
train_defenses = None  # train and score the defenses on this data set (per data set)
defenses = None  # defenses trained (normal and superimposition are required)
defense_train_size = None  # training images of the defended models (the first N) (per data set)
defense_epochs = None  # training epochs of every defended model (per data set)
lam = None  # weight of the KL term of superimposition training
fixed_a = None  # superimposition weight a of the fixed-a variant
temperature = None  # temperature of defensive distillation
at_steps = None  # PGD steps of PGD adversarial training (per data set)
at_mix = None  # share of PGD examples in the PGD adversarial training loss (1 is Madry et al.)
cost_batches = None  # training steps timed and counted per defense for the cost table
jumprelu_kappa = None  # JumpReLU threshold of the retrofitted reference model when the JumpReLU chapter's results of this profile hold no choice (a labelled default; set by hand, it replaces that chapter's choice) (per data set)
rescale_strength = None  # compress/amplify strength of the rescaled reference model when the fragile-neurons chapter's results of this profile hold no choice (a labelled default; set by hand, it replaces that chapter's choice)
n_adaptive = None  # test images for the white-box worst case and the health checks (the first N) (per data set)
white_radii = None  # fractions of the threat radius at which this chapter's defenses face the white-box worst case (a nested curve; must contain 1, the threat radius)
premise_fixed_step = None  # step of the fixed-step PGD variant of the premise sweep, as a fraction of the threat radius (the scaled variant steps 2.5·eps/iterations)
pgd_steps = None  # steps of the PGD members of the worst case
restarts = None  # random restarts of the PGD members
square_queries = None  # queries per image of the Square member
health_steps = None  # PGD steps of the health checks
batch_size = None  # attack batch size
seed = None  # random seed of the attacks and of the superimposition draws

# %% tags=["remove-cell"]
import matplotlib.pyplot as plt
from IPython.display import Markdown, display

from robustness_book.chapters import transferable_adversaries as chapter
from robustness_book.config import resolve_notebook
from robustness_book.runtime import seed_everything

cfg = resolve_notebook(chapter.SPEC, globals())
seed_everything(cfg.seed)
run = chapter.Run(cfg)

# %% tags=["remove-input"]
display(Markdown(cfg.markdown()))

# %% [markdown]
# ## The model pool
#
# Transfer needs several networks that were trained independently. Per data set the pool holds the book's shared
# architecture (LeNetLike on MNIST, AlexLike on CIFAR-10, from the model zoo, `python -m robustness_book models`)
# trained from each seed of `seeds`, and a second architecture (`second_arch`: an MLP on MNIST, Deep Defense's
# ConvNet on CIFAR-10) from each seed of `second_seeds`. Every network follows the zoo's recipe for the profile,
# except for the second architecture's learning rate (`second_lr`, smaller than the zoo's); the table's clean
# accuracies show whether every network learned. The first network, the zoo's own, is the *reference model*: the
# other chapters modify it, so it is kept out of the surrogates of the adversary set below.
#
# The `n_transfer` training images after the pool's training images are held out: no network saw them, and the
# transfer matrix and every choice below are made on them, never on test images.

# %%
chapter.train_pool(run)
display(Markdown(chapter.pool_table(run.results())))

# %% [markdown]
# ## The transfer matrix
#
# Each generator crafts examples on a *source* and they are shown to every *target* that did not craft them. A
# source attacked by itself would be the white-box case, so those cells are left out; an ensemble generator
# crafts on all the networks but the target (leave one out). The entry of a cell is the *fooling rate*: among the
# held-out images the target classifies correctly, the share its transferred example sends to a wrong class
# (images the target gets wrong anyway say nothing about transfer).
#
# All generators work in the L∞ ball of the data set's threat radius. FGSM takes one step of that size. PGD takes
# `steps` steps of 2.5·ε/`steps` from a random start, MI-FGSM `steps` steps of ε/`steps` from the image along a
# momentum-averaged gradient (decay `momentum`), and with input diversity each gradient is taken at a randomly
# shrunk and padded copy of the image (probability `diversity`). All multi-step generators return their *last*
# iterate: a point deep past the source's boundary transfers better than its first crossing.

# %%
chapter.transfer_all(run)
display(Markdown(chapter.transfer_table(run.results())))

# %% [markdown]
# The heat map shows the same numbers. Reading down a column compares generators on one target; the paper's
# premise predicts that the PGD rows are darker than the FGSM rows, and its claim that some multi-step generator
# is brighter than both.

# %% mystnb={"figure": {"caption": "The transfer matrix: per data set, the fooling rate (%) of each generator and source (rows) on each target (columns), among the held-out images the target classifies correctly; white-box cells (a source on itself) are blank.", "name": "fig-transfer-matrix"}}
chapter.transfer_figure(run.results())
plt.show()

# %% [markdown]
# The summary per generator pools its cells (fooled images over correctly classified ones, summed over the
# pairs), and compares it with FGSM target by target: on each target, the generator's strongest source against
# FGSM's strongest source, by their 95% Wilson intervals. For the single-source generators it also counts the
# (source, target) pairs on which FGSM transfers clearly better: where multi-step examples transfer worse.

# %%
display(Markdown(chapter.generator_table(run.results())))

# %% [markdown]
# ### Where does the premise hold?
#
# One radius and one number of iterations do not settle the premise. The observation it comes from (Kurakin et
# al. {cite}`kurakin2017adversarial`) was made on ImageNet networks at radii small for their images, and
# transfer is known to depend on both. So on up to two pairs with the reference model as target, one source of the
# same architecture (the easiest case for transfer; it needs a second seed) and one of the second architecture, the sweep below varies the
# radius (fractions `premise_radii` of the threat radius, `steps` iterations) and then the number of iterations at
# the threat radius (`premise_steps`). PGD's step of 2.5·ε/iterations shrinks as the iterations grow, which
# confounds the two, so PGD also runs with a fixed step (`premise_fixed_step` × ε, as Kurakin et al.'s basic
# iterative method): there more iterations only travel further. Beside each transfer rate stands the rate of the
# same examples on the source itself, the white-box rate the premise says multi-step attacks win. With one
# iteration, MI-FGSM is FGSM; PGD is one step of 2.5·ε (or of the fixed step) from a random start.

# %%
chapter.premise_all(run)

# %% mystnb={"figure": {"caption": "The premise sweep per data set and (source, target) pair, one of the same architecture and one across architectures: fooling rate against the radius (left) and against the number of iterations at the threat radius (right; PGD with its scaled and with a fixed step); solid lines on the target (transfer), dashed on the source itself (white box); bands are 95% Wilson intervals.", "name": "fig-transfer-premise"}}
chapter.premise_figure(run.results())
plt.show()

# %% [markdown]
# ## The adversary set
#
# The generator with the highest pooled fooling rate on the held-out images (or `set_generator`) turns the first
# `n_set` test images into the chapter's *adversary set*, crafted on every pool network but the reference model
# (a single-source generator uses the first of them). The set is stored once with the recipe that made it (the
# generator, its knobs, the surrogates and a hash of their weights, the images, the seed) and the file's
# SHA-256 checksum; a later run loads it instead of crafting it again, and only if its recipe is this run's. It
# is then read back by name, as any chapter can read it, through `load_dataset("adversary:<name>", "test")`,
# which checks the checksum. The same generator also turns the first `n_set_train` training images into a
# training set, `load_dataset("adversary:<name>-train", "train")`, for readers who want to train on transferred
# examples (ensemble adversarial training {cite}`tramer2018ensemble` does); this chapter does not use it.

# %%
chapter.adversary_sets(run)
display(Markdown(chapter.set_table(run.results())))

# %% [markdown]
# ## The defenses
#
# Where `train_defenses` is set (on a laptop: MNIST only, since every defense is a full training run), six
# networks of the shared architecture are trained with one recipe, `defense_train_size` images and
# `defense_epochs` epochs, each with its own objective:
#
# - *normal training*: cross-entropy;
# - *FGSM adversarial training*: half the loss on clean images, half on FGSM examples at the threat radius
#   crafted against the current weights;
# - *defensive distillation* {cite}`papernot2016distillation`, set up as in Carlini's reimplementation and the
#   third-party code (Papernot et al. describe no common start): one epoch of normal training as a common start; from there a teacher trained with the softmax at temperature $T$ = `temperature`; from the same
#   start a student trained at $T$ on the teacher's soft labels; the student is deployed at $T = 1$;
# - *superimposition + KL* with $a \sim \mathrm{Beta}(2, 10)$ drawn per batch, and with a fixed $a$ (`fixed_a`,
#   by default the mean of that distribution, 1/6); the partner $x_r$ of each image is another image of the same
#   batch;
# - *PGD adversarial training*, the reference: `at_steps` PGD steps at the threat radius. A share `at_mix` of the
#   loss is on PGD examples and the rest on clean images: small networks trained on PGD examples alone at a large
#   radius may fail to learn at all (Madry et al.'s capacity study {cite}`madry2018towards`), so half and half is the
#   default; its clean accuracy in the table below shows whether it learned.

# %%
chapter.train_defenses(run)
display(Markdown(chapter.training_table(run.results())))

# %% [markdown]
# ## What a training step costs
#
# The paper's efficiency claim is about passes through the network. We count them: every defense runs
# `cost_batches` steps of the book's training loop on a fresh network, and hooks on the network (and on
# distillation's teacher) count the images that go forward and the images a gradient flows back through, per
# training image. The counts are exact, so they are records; the seconds per step measured beside them depend on
# the machine and go to the timings.

# %%
chapter.cost_all(run)
display(Markdown(chapter.cost_table(run.results())))

# %% [markdown]
# ## On the adversary set, and in the white box
#
# Every network is now scored three ways: clean accuracy on the set's test images, accuracy on the adversary set
# at the threat radius (claim ii: the transfer number), and the book's adaptive worst case on the first
# `n_adaptive` of them (the toolkit's default ensemble of gradient and gradient-free attacks, each only on the
# images still standing, an image counting as robust only if it survives them all). At the threat radius an
# undefended network is usually at 0% in the white box (MNIST, ε = 0.3), where no gain can show; so this
# chapter's defenses face the worst case as a nested curve over the fractions `white_radii` of the threat radius,
# and the white-box comparison is judged at the radii where normal training is off the floor.
#
# Beside this chapter's defenses stand the shared reference model and the defenses of it the other chapters
# built that cost nothing to rebuild: JumpReLU's retrofit {cite}`erichson2020jumprelu`, attacked also through its
# BPDA copy {cite}`athalye2018obfuscated`, and the fragile-neurons chapter's compress/amplify rescaling
# {cite}`pravin2021fragile`, with fragility measured by nodal dropout on the held-out images. Their κ and strength
# are the ones those chapters chose on their validation images, read from their results files of the same profile;
# where a file (or its choice) is missing, the row uses the labelled default `jumprelu_kappa` or
# `rescale_strength`, and the note below the table names the command that makes the choice.
# The Deep Defense {cite}`yan2018deep` and entropic-retraining networks are trainings of their own, with their
# own architectures: they are loaded from the checkpoints their chapters name in their results files (checked by
# hash, never retrained), so they are scored when those chapters have run with the same profile, as in a full
# build; a note says which are missing and how to make them. None of these networks helped craft the set: it is
# a transfer number for all of them.

# %%
chapter.score_all(run)
display(Markdown(chapter.score_table(run.results()) + "\n\n" + chapter.notes_markdown(run.results())))

# %% [markdown]
# This chapter's defenses over the radii of their white-box curve, on the same images at every radius (nested: an
# image fooled at a smaller radius counts as fooled at every larger one). Normal training's row shows where a gain
# can show at all.

# %%
display(Markdown(chapter.white_box_table(run.results())))

# %% [markdown]
# A defense that only resists transfer shows a tall middle bar and a short right one.

# %% mystnb={"figure": {"caption": "Per data set and network: clean accuracy, accuracy on the adversary set, and the white-box worst case at the same radius, with 95% Wilson intervals.", "name": "fig-transfer-scores"}}
chapter.score_figure(run.results())
plt.show()

# %% [markdown]
# ## Evaluation health
#
# The checklist of {cite}`carlini2019evaluating` at the threat radius on the superimposition-trained network and
# on the two established defenses it is compared with, which are the textbook cases of masked gradients: defensive
# distillation at T = 100 {cite}`carlini2017towards` and single-step adversarial training
# {cite}`tramer2018ensemble`. Each table checks that accuracy at radius zero equals clean accuracy, that accuracy
# never rises with the radius and reaches chance at a very large one, that many PGD steps do no worse than FGSM,
# that doubling the steps barely helps, that input gradients are not zero, that the gradient-free attack adds
# almost nothing to the gradient ones, and that the adversary set's transferred examples fool less often than
# white-box ones. A failed row is shown, never hidden.

# %%
chapter.health_all(run)
display(Markdown(chapter.health_tables(run.results())))

# %% tags=["remove-cell"]
saved = run.saved()

# %% [markdown]
# ## Results and verdict
#
# Everything above is one results file; the verdict is computed from it as read back, by
# {func}`robustness_book.chapters.transferable_adversaries.verdict`. Per data set it asks whether multi-step PGD
# transfers clearly worse than FGSM on most (source, target) pairs (the paper's premise), and whether the adversary
# set's generator transfers clearly better than FGSM on every target (claim i, for the stand-ins): fooling rates,
# compared by their 95% intervals. Where defenses were trained, every comparison is paired on the same images
# (exact McNemar test, Newcombe interval, Holm over the superimposition variants and data sets) and ends in one of
# three outcomes: holds, does not hold, or inconclusive with its reason (at the floor, too few images, an unhealthy
# evaluation, a broken network). Claim (iii) is judged on the adversary set, its own threat model. The white box is
# the book's check beyond the paper, a separate finding: judged at each radius of the curve where normal training is
# off the floor (Holm over the radii too), and a white-box positive must survive AutoAttack on the worst case's
# survivors at that radius (its flags are shown). Over the curve it holds where one radius holds, unless another
# radius shows the defense significantly *below* normal training: that refutes "more robust", and the claim does
# not hold. "Transfer-only" appears only with evidence: a gain the set showed over normal training on the same
# images, and the white-box worst case measurably below the network's own accuracy on the set, with the attack
# that removed it named.

# %%
display(Markdown(chapter.verdict(saved)))
