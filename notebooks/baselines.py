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
# # Threat model and attacks on an undefended model
#
# Every later chapter asks whether a defense makes a network harder to fool. That question only has an
# answer once we fix *what the attacker may do* (the threat model) and know *how strong our attacks are*
# against a model that has no defense at all. This chapter does both on MNIST with the LeNetLike network
# of the JumpReLU paper {cite}`erichson2020jumprelu`.
#
# **Threat model.** Images live in $[0, 1]^{C\times H\times W}$; normalization is a layer inside the model, so
# every attack works on raw pixels and clips to $[0, 1]$. The attacker knows the weights (white-box) and
# may change each image by at most $\varepsilon$ in a norm: the standard MNIST setting is
# $\|\delta\|_\infty \le 0.3$ {cite}`madry2018towards`. We also measure *minimum-norm* attacks, which
# report the smallest $\ell_2$ perturbation that changes the label, as DeepFool {cite}`moosavi2016deepfool`
# and Deep Defense {cite}`yan2018deep` do.
#
# **Attacks.** FGSM {cite}`goodfellow2015explaining` (one signed-gradient step), PGD in $\ell_\infty$ and
# $\ell_2$ {cite}`madry2018towards` (projected gradient steps from a random start, with restarts),
# DeepFool in $\ell_2$ and $\ell_\infty$ (linearize, step to the nearest boundary, repeat), and DDN
# {cite}`rony2019decoupling`, a minimum-norm $\ell_2$ attack we use to check DeepFool's numbers: DeepFool
# stops at the first boundary it crosses, which over-estimates the distance, while DDN keeps shrinking the
# norm of an adversarial example for a fixed budget of steps. The health checks at the end follow
# {cite}`carlini2019evaluating`.
#
# The run's profile and parameters are printed below; rerun this page with other values as described in
# [Running the book](../running.md).

# %% tags=["parameters"]
profile = "auto"  # smoke | laptop | paper | auto (paper on a GPU, else laptop)
dataset = None  # data set: mnist, fashion_mnist, cifar10
model = None  # architecture from robustness.models: lenet_like, alex_like, mlp, lenet, convnet, resnet20
train_size = None  # training images used (the first N)
epochs = None  # training epochs
lr = None  # SGD learning rate
n_clean = None  # test images for clean accuracy (the first N)
n_attack = None  # test images attacked (the first N)
eps = None  # L∞ threat-model radius on [0, 1] pixels
eps_grid_linf = None  # L∞ radii for the accuracy curves
eps_grid_l2 = None  # L2 radii for the accuracy curves
pgd_steps = None  # PGD iterations
restarts = None  # PGD random restarts (worst case kept per image)
deepfool_iter = None  # DeepFool maximum iterations
ddn_steps = None  # DDN (minimum-norm L2 attack) iterations
square_queries = None  # queries per image of the Square member of the adaptive worst case
batch_size = None  # attack batch size
seed = None  # random seed

# %%
from IPython.display import Markdown, display

from robustness.chapters.baselines import SPEC
from robustness.config import resolve

cfg = resolve(SPEC, profile=profile, dataset=dataset, model=model, train_size=train_size, epochs=epochs, lr=lr,
              n_clean=n_clean, n_attack=n_attack, eps=eps, eps_grid_linf=eps_grid_linf, eps_grid_l2=eps_grid_l2,
              pgd_steps=pgd_steps, restarts=restarts, deepfool_iter=deepfool_iter, ddn_steps=ddn_steps,
              square_queries=square_queries, batch_size=batch_size, seed=seed)
display(Markdown(cfg.markdown()))

# %% [markdown]
# ## The model
#
# We train the network with the recipe of the JumpReLU code (SGD, momentum 0.9, weight decay $5\cdot10^{-4}$,
# batch 128, learning rate × 0.2 at a third, two thirds and eight ninths of training), for the number of
# epochs the profile sets. Trained weights are cached under a hash of the whole recipe, so rerunning the page
# does not retrain.

# %%
import dataclasses

import matplotlib.pyplot as plt
import torch

from robustness import attacks, evaluate, report
from robustness.data import dataset_info, load_dataset
from robustness.results import StageTimer, load_results, write_results
from robustness.runtime import seed_everything
from robustness.train import TrainConfig, official_milestones, trained_model

seed_everything(cfg.seed)
timer = StageTimer()
info = dataset_info(cfg.dataset)
test = load_dataset(cfg.dataset, "test")
clean_set = test.first(cfg.n_clean)
attack_set = test.first(cfg.n_attack)
x, y = attack_set.x, attack_set.y
train_config = TrainConfig(epochs=cfg.epochs, lr=cfg.lr, milestones=official_milestones(cfg.epochs),
                           augment=cfg.dataset == "cifar10", seed=cfg.seed)
with timer("train"):
    net, train_meta = trained_model(cfg.model, cfg.dataset, train_config, train_size=cfg.train_size)
with timer("clean accuracy"):
    clean_acc = evaluate.accuracy(net, clean_set.x, clean_set.y)
metrics = {"clean_accuracy": clean_acc, "n_clean": len(clean_set), "n_attack": len(attack_set),
           "clean_accuracy_attack_subset": evaluate.accuracy(net, x, y),
           "train_loss_per_epoch": [e["loss"] for e in train_meta["history"]["epochs"]]}
timings = {"train": {"cached": train_meta["cached"], "seconds": train_meta["train_seconds"]}}
display(Markdown(f"Test set: {test.source}. Clean accuracy on the first {len(clean_set):,} test images: "
                 f"**{report.pct(clean_acc)}** (training {'loaded from the cache' if train_meta['cached'] else 'ran'}: "
                 f"{train_meta['train_seconds']:.0f} s)."))

# %% [markdown]
# ## Accuracy under attack as $\varepsilon$ grows
#
# For each radius we attack the first `n_attack` test images. PGD takes `pgd_steps` steps of size
# $2.5\,\varepsilon/\text{steps}$ from a random start; with several restarts the worst case per image is kept.
# FGSM is PGD's one-step ancestor: if it ever did better than PGD, our PGD would be broken.

# %%
gen_kwargs = dict(steps=cfg.pgd_steps, restarts=cfg.restarts)
with timer("accuracy curves"):
    curves_linf = {
        "FGSM": evaluate.accuracy_curve(net, x, y, attacks.fgsm, cfg.eps_grid_linf, cfg.batch_size),
        f"PGD-{cfg.pgd_steps} L∞": evaluate.accuracy_curve(net, x, y, attacks.pgd_linf, cfg.eps_grid_linf,
                                                           cfg.batch_size, seed=cfg.seed, **gen_kwargs),
    }
    curves_l2 = {f"PGD-{cfg.pgd_steps} L2": evaluate.accuracy_curve(net, x, y, attacks.pgd_l2, cfg.eps_grid_l2,
                                                                    cfg.batch_size, seed=cfg.seed, **gen_kwargs)}
metrics["curves_linf"], metrics["curves_l2"] = curves_linf, curves_l2
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
report.plot_curves(curves_linf, "L∞ radius ε", title="L∞ attacks", ax=axes[0], chance=1 / info.num_classes)
axes[0].axvline(cfg.eps, color="red", ls="--", lw=1)
report.plot_curves(curves_l2, "L2 radius ε", title="L2 attack", ax=axes[1], chance=1 / info.num_classes)
plt.show()

# %% [markdown]
# ## How far is the decision boundary? Minimum-norm attacks
#
# DeepFool and DDN do not take a radius: they return, per image, a small perturbation that changes the label.
# We report $\rho_{adv} = \|r\|_2 / \|x\|_2$, averaged over the correctly classified images the attack fools,
# as DeepFool and Deep Defense define it, and its median (a failure counts as $\infty$ there). DDN should find
# perturbations no larger than DeepFool's; where DeepFool's are much larger, DeepFool's $\rho$ over-states
# robustness.

# %%
minnorm = {}
with timer("deepfool l2"):
    adv_df2 = evaluate.run_attack(attacks.deepfool, net, x, y, cfg.batch_size, norm=2, max_iter=cfg.deepfool_iter)
with timer("deepfool linf"):
    adv_dfi = evaluate.run_attack(attacks.deepfool, net, x, y, cfg.batch_size, norm=float("inf"),
                                  max_iter=cfg.deepfool_iter)
with timer("ddn"):
    adv_ddn = evaluate.run_attack(attacks.ddn, net, x, y, cfg.batch_size, steps=cfg.ddn_steps)
minnorm["DeepFool L2"] = evaluate.min_norm_summary(x, adv_df2, y, net, p=2)
minnorm["DeepFool L∞"] = evaluate.min_norm_summary(x, adv_dfi, y, net, p=float("inf"))
minnorm["DDN L2"] = evaluate.min_norm_summary(x, adv_ddn, y, net, p=2)
metrics["min_norm"] = {k: {kk: vv for kk, vv in v.items() if kk != "rho"} for k, v in minnorm.items()}
display(Markdown(report.markdown_table(
    [{"attack": k, **v} for k, v in metrics["min_norm"].items()],
    {"attack": "attack", "p": "norm", "success_rate": "success", "rho_mean": "mean ρ_adv",
     "rho_median": "median ρ_adv", "norm_median": "median ‖r‖"},
    {"success_rate": report.pct})))
fig, ax = plt.subplots(figsize=(6, 3.4))
for name in ("DeepFool L2", "DDN L2"):
    ax.hist(minnorm[name]["rho"], bins=30, alpha=0.6, label=name)
ax.set(xlabel="ρ = ‖r‖₂ / ‖x‖₂", ylabel="images", title="Relative L2 size of minimum-norm perturbations")
ax.legend()
plt.show()

# %% [markdown]
# ## What the adversarial examples look like
#
# PGD-L∞ at the threat-model radius: the clean image with its label and prediction, the adversarial image
# with the new prediction, and the perturbation (amplified to the full gray range).

# %%
k = min(8, len(x))
adv_show = evaluate.run_attack(attacks.pgd_linf, net, x[:k], y[:k], eps=cfg.eps, steps=cfg.pgd_steps,
                              generator=torch.Generator(evaluate.model_device(net)).manual_seed(cfg.seed))
report.plot_examples(x[:k], adv_show, y[:k], evaluate.predict(net, x[:k]), evaluate.predict(net, adv_show),
                     info.classes, title=f"PGD-L∞, ε = {cfg.eps:g}")
plt.show()

# %% [markdown]
# ## Evaluation health
#
# First the adaptive worst case that every later chapter reports: per image, PGD on the cross-entropy, then PGD
# on the margin loss, then the gradient-free Square attack {cite}`andriushchenko2020square`, each run only on
# the images the earlier ones left standing; an image counts as robust only if it survives all three. The
# interval is the 95% Wilson interval over the attacked images.
#
# Then the checklist of {cite}`carlini2019evaluating`, run on this model: an evaluation that fails one of these
# is more likely measuring a broken attack than a robust model. Failed checks are shown, never hidden. If Square
# fools images that both PGD runs missed, the gradients are probably masked. For the transfer check we train a
# second copy of the network from another seed and attack *it* with full-strength PGD; examples crafted on a
# different model should fool ours less often than white-box ones.

# %%
with timer("worst case"):
    worst = evaluate.worst_case(net, x, y, cfg.eps,
                                evaluate.default_members(cfg.pgd_steps, cfg.restarts, cfg.square_queries),
                                batch_size=cfg.batch_size, seed=cfg.seed)
metrics["worst_case"] = evaluate.to_record(worst)
timings["worst_case"] = worst["seconds"]
display(Markdown(f"Adaptive worst case at ε = {cfg.eps:g} on {worst['n']:,} images: **{report.pct(worst['robust'])}** "
                 f"(95% interval {report.pct(worst['interval'][0])}–{report.pct(worst['interval'][1])}; clean "
                 f"{report.pct(worst['clean'])}). Images each member fooled that the earlier ones missed: "
                 + ", ".join(f"{name} {count}" for name, count in worst["added"].items()) + "."))

# %%
with timer("train transfer source"):
    source_net, _ = trained_model(cfg.model, cfg.dataset, dataclasses.replace(train_config, seed=cfg.seed + 1),
                                  train_size=cfg.train_size)
with timer("health checks"):
    source_gen = torch.Generator(evaluate.model_device(source_net)).manual_seed(cfg.seed)
    transfer_adv = evaluate.run_attack(attacks.pgd_linf, source_net, x, y, cfg.batch_size, eps=cfg.eps,
                                       steps=cfg.pgd_steps, early_stop=False, generator=source_gen)
    health = evaluate.health_checks(net, x, y, eps=cfg.eps, steps=cfg.pgd_steps, num_classes=info.num_classes,
                                    transfer_x_adv=transfer_adv, worst=worst, batch_size=cfg.batch_size,
                                    seed=cfg.seed)
display(Markdown(report.health_markdown(health)))

# %% [markdown]
# ## What each attack costs
#
# Wall-clock time for the first `n_attack` test images on this run's device (one eps for the radius attacks).

# %%
costs = {}
for name, fn, kwargs in [
    ("FGSM", attacks.fgsm, dict(eps=cfg.eps)),
    (f"PGD-{cfg.pgd_steps} L∞", attacks.pgd_linf, dict(eps=cfg.eps, steps=cfg.pgd_steps)),
    (f"DeepFool L2 (≤{cfg.deepfool_iter} it.)", attacks.deepfool, dict(norm=2, max_iter=cfg.deepfool_iter)),
    (f"DDN ({cfg.ddn_steps} steps)", attacks.ddn, dict(steps=cfg.ddn_steps)),
]:
    _, seconds = evaluate.timed(evaluate.run_attack, fn, net, x, y, cfg.batch_size, **kwargs)
    costs[name] = {"seconds": seconds, "images_per_second": len(x) / seconds}
timings["attack_cost"] = costs
display(Markdown(report.markdown_table([{"attack": k, **v} for k, v in costs.items()],
                                       {"attack": "attack", "seconds": "seconds", "images_per_second": "images/s"},
                                       {"seconds": lambda s: f"{s:.2f}", "images_per_second": lambda r: f"{r:.0f}"})))

# %% [markdown]
# ## Results and verdict
#
# All numbers on this page are saved to one JSON file, which later chapters read; the summary below is read
# back from that file.

# %%
path = write_results(cfg, metrics, health, timer, timings)
saved = load_results(cfg.chapter, cfg.profile)
m = saved["metrics"]
pgd_name = f"PGD-{cfg.pgd_steps} L∞"
at_eps = next(p["accuracy"] for p in m["curves_linf"][pgd_name] if abs(p["eps"] - cfg.eps) < 1e-9) \
    if any(abs(p["eps"] - cfg.eps) < 1e-9 for p in m["curves_linf"][pgd_name]) else None
failed = [h["check"] for h in saved["health"] if not h["passed"]]
ratio = m["min_norm"]["DeepFool L2"]["rho_median"] / m["min_norm"]["DDN L2"]["rho_median"]
lines = [f"Results: `{path.name}` (profile `{saved['profile']}`).",
         f"- Clean accuracy {report.pct(m['clean_accuracy'])} on {m['n_clean']:,} test images."]
if at_eps is not None:
    lines.append(f"- Under {pgd_name} at ε = {cfg.eps:g} the undefended model keeps {report.pct(at_eps)} accuracy "
                 f"on {m['n_attack']:,} images: " + ("it is not robust in this threat model."
                                                     if at_eps < 0.1 else "notably high for an undefended model."))
wc = m["worst_case"]
lines.append(f"- Adaptive worst case (PGD-CE, PGD-margin, Square) at ε = {wc['eps']:g}: {report.pct(wc['robust'])} "
             f"(95% interval {report.pct(wc['interval'][0])}–{report.pct(wc['interval'][1])}).")
lines.append(f"- DeepFool's median ρ is {ratio:.2f}× DDN's: "
             + ("DeepFool over-states the distance to the boundary." if ratio > 1.05
                else "on this model DeepFool's estimate is close to the stronger attack's."))
lines.append(f"- Health checks: {len(saved['health']) - len(failed)} of {len(saved['health'])} passed"
             + (f"; failed: {', '.join(failed)}." if failed else "."))
display(Markdown("\n".join(lines)))
