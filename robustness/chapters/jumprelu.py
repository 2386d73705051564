"""Chapter 2 — JumpReLU, reproduced and re-evaluated (chapter id ``jumprelu``).

Besides the chapter's parameters and profiles, this module holds the chapter-specific glue the
notebook calls: training the baseline / FGSM-mix models on a split that leaves a validation set
out, the trade-off figures, and the kappa slider.
"""
from __future__ import annotations

from ..config import ChapterSpec, Param, RunConfig
from ..data import dataset_info
from ..report import pct, show_image

#: The paper's models: (dataset, architecture) per data-set prefix of the parameters.
ARCH = {"mnist": "lenet_like", "cifar": "alex_like"}
DATASET = {"mnist": "mnist", "cifar": "cifar10"}


def _check(cfg: RunConfig) -> None:
    for d in ("mnist", "cifar"):
        if 0.0 not in cfg[f"{d}_kappas"]:
            raise ValueError(f"parameter {d}_kappas={cfg[f'{d}_kappas']} must contain 0 (the unmodified model)")
        if cfg[f"{d}_adv_ratio"] > 1:
            raise ValueError(f"parameter {d}_adv_ratio={cfg[f'{d}_adv_ratio']} must be in [0, 1]")
        if cfg[f"{d}_n_val"] >= cfg[f"{d}_train_size"]:
            raise ValueError(f"parameter {d}_n_val={cfg[f'{d}_n_val']} must be smaller than "
                             f"{d}_train_size={cfg[f'{d}_train_size']}")
        if cfg[f"{d}_n_attack"] > cfg[f"{d}_n_val"]:
            raise ValueError(f"parameter {d}_n_attack={cfg[f'{d}_n_attack']} must not exceed "
                             f"{d}_n_val={cfg[f'{d}_n_val']} (kappa is chosen by attacking validation images)")
        for small in ("n_attack", "n_deepfool", "n_adaptive"):
            if cfg[f"{d}_{small}"] > cfg[f"{d}_n_clean"]:
                raise ValueError(f"parameter {d}_{small}={cfg[f'{d}_{small}']} must not exceed "
                                 f"{d}_n_clean={cfg[f'{d}_n_clean']}")
    if cfg.mnist_train_size > 60000:
        raise ValueError(f"parameter mnist_train_size={cfg.mnist_train_size} exceeds the 60,000 MNIST training images")
    if cfg.cifar_train_size > 50000:
        raise ValueError(f"parameter cifar_train_size={cfg.cifar_train_size} exceeds the 50,000 CIFAR-10 "
                         "training images")
    if cfg.deepfool_classes < 2 or cfg.deepfool_classes > 10:
        raise ValueError(f"parameter deepfool_classes={cfg.deepfool_classes} must be in 2..10")


def _per(prefix_help: dict[str, tuple[str, str]]) -> dict[str, Param]:
    out = {}
    for d, name in (("mnist", "MNIST"), ("cifar", "CIFAR-10")):
        for key, (kind, text) in prefix_help.items():
            out[f"{d}_{key}"] = Param(kind, f"{name}: {text}")
    return out


PARAMS = {
    **_per({
        "train_size": ("pos_int", "training images used (the first N), validation included"),
        "n_val": ("pos_int", "of those, images held out at random to choose kappa"),
        "epochs": ("pos_int", "training epochs"),
        "adv_ratio": ("nonneg_float", "fraction of each batch replaced by FGSM examples (robust model)"),
        "n_clean": ("pos_int", "test images for clean accuracy (the first N)"),
        "n_attack": ("pos_int", "test (and validation) images attacked with IFGSM (the first N)"),
        "n_deepfool": ("pos_int", "test images attacked with DeepFool (the first N)"),
        "n_adaptive": ("pos_int", "test images for the adaptive attacks and health checks (the first N)"),
        "kappas": ("nonneg_float_list", "kappa grid (must contain 0)"),
        "iter": ("pos_int", "IFGSM and DeepFool iterations (official: 40 MNIST, 7 CIFAR)"),
        "pgd_eps": ("eps_linf_list", "L∞ radii on [0, 1] pixels of the adaptive attack ensemble"),
        "lr": ("pos_float", "initial SGD learning rate (× 0.2 at the official milestones, scaled to the epochs)"),
        "budget": ("nonneg_float", "largest clean-accuracy drop (fraction) allowed when choosing kappa"),
        "ddn_steps": ("nonneg_int", "iterations of the min-norm attack (DDN through BPDA; 0 = not run)"),
    }),
    "mnist_adv_eps": Param("eps_linf", "MNIST: FGSM radius of the robust model's training, [0, 1] pixels"),
    "cifar_adv_eps_normalized": Param("nonneg_float", "CIFAR-10: FGSM radius of the robust model's training in "
                                                      "normalized units (× mean std → pixels)"),
    "cifar_augment": Param("bool", "CIFAR-10: random crops (pad 4) and flips in training, as the official code"),
    "ifgsm_step": Param("pos_float", "IFGSM step size on [0, 1] pixels"),
    "deepfool_classes": Param("pos_int", "DeepFool candidate classes (10 = all, as the official code)"),
    "pgd_steps": Param("pos_int", "PGD iterations of every adaptive-ensemble member"),
    "restarts": Param("pos_int", "random restarts of PGD-BPDA and of the transfer source (κ = 0) PGD"),
    "smooth_temperature": Param("nonneg_float", "temperature of the smooth-surrogate BPDA member (0 = not run)"),
    "health_steps": Param("pos_int", "PGD steps of the health checks"),
    "adaptive_all_kappas": Param("bool", "adaptive attacks on every kappa (else on 0, the chosen and the largest)"),
    "batch_size": Param("pos_int", "attack batch size"),
    "seed": Param("nonneg_int", "random seed"),
}

_COMMON = {
    "mnist_adv_ratio": 0.3, "mnist_adv_eps": 0.3, "cifar_adv_ratio": 0.6, "cifar_adv_eps_normalized": 0.031,
    "mnist_kappas": [0.0, 0.5, 1.0, 1.5], "cifar_kappas": [round(0.1 * i, 1) for i in range(9)],
    "mnist_iter": 40, "cifar_iter": 7, "ifgsm_step": 0.01, "mnist_lr": 0.02, "cifar_lr": 0.02,
    # the threat-model radii (0.3, 8/255) and a larger one, where a sound evaluation must approach 0
    "mnist_pgd_eps": [0.1, 0.2, 0.3, 0.4], "cifar_pgd_eps": [8 / 255, 16 / 255], "smooth_temperature": 0.1,
    "mnist_budget": 0.01, "cifar_budget": 0.03, "cifar_augment": True, "batch_size": 250, "seed": 0,
}

PROFILES = {
    "smoke": {**_COMMON, "mnist_train_size": 3000, "mnist_n_val": 500, "mnist_epochs": 1,
              "cifar_train_size": 1500, "cifar_n_val": 300, "cifar_epochs": 1,
              "mnist_n_clean": 500, "mnist_n_attack": 100, "mnist_n_deepfool": 50, "mnist_n_adaptive": 50,
              "cifar_n_clean": 300, "cifar_n_attack": 40, "cifar_n_deepfool": 16, "cifar_n_adaptive": 16,
              "mnist_kappas": [0.0, 1.0], "cifar_kappas": [0.0, 0.4], "mnist_iter": 10, "cifar_iter": 3,
              "mnist_pgd_eps": [0.1, 0.4], "cifar_pgd_eps": [8 / 255], "deepfool_classes": 3, "pgd_steps": 10,
              "restarts": 2, "mnist_ddn_steps": 20, "cifar_ddn_steps": 20, "health_steps": 5, "adaptive_all_kappas": True},
    # Sized for 2 CPU cores (≤ 15 min). CIFAR-10 training is the expensive part: 9,000 training images for 4 of the
    # 90 epochs, without crops and flips and with a larger initial learning rate (in a 4-epoch trial on 10,000
    # images, crops and flips cost 8 points of clean accuracy, and lr 0.1 reached 49% where 0.05 reached 43%); the
    # official step schedule is scaled to the 4 epochs. CIFAR-10 also gets the paper's grid up to 0.6 (at 0.8 this
    # undertrained model is at chance), small attack subsets and no DDN. DeepFool keeps 3 of the official 9
    # candidate classes (its cost grows with them) and the official iterations; the adaptive ensemble runs on
    # kappa = 0, the chosen and the largest kappa.
    "laptop": {**_COMMON, "mnist_train_size": 60000, "mnist_n_val": 5000, "mnist_epochs": 3,
               "cifar_train_size": 10000, "cifar_n_val": 1000, "cifar_epochs": 4, "cifar_lr": 0.1,
               "cifar_augment": False,
               "mnist_n_clean": 10000, "mnist_n_attack": 1000, "mnist_n_deepfool": 500, "mnist_n_adaptive": 200,
               "cifar_n_clean": 1000, "cifar_n_attack": 200, "cifar_n_deepfool": 100, "cifar_n_adaptive": 100,
               "cifar_kappas": [0.0, 0.2, 0.4, 0.6], "deepfool_classes": 4,
               "pgd_steps": 100, "restarts": 2, "mnist_ddn_steps": 100, "cifar_ddn_steps": 0,
               "health_steps": 20, "adaptive_all_kappas": False},
    "paper": {**_COMMON, "mnist_train_size": 60000, "mnist_n_val": 5000, "mnist_epochs": 90,
              "cifar_train_size": 50000, "cifar_n_val": 5000, "cifar_epochs": 90,
              "mnist_n_clean": 10000, "mnist_n_attack": 5000, "mnist_n_deepfool": 5000, "mnist_n_adaptive": 1000,
              "cifar_n_clean": 1000, "cifar_n_attack": 1000, "cifar_n_deepfool": 1000, "cifar_n_adaptive": 1000,
              "deepfool_classes": 10, "pgd_steps": 100, "restarts": 5, "mnist_ddn_steps": 1000,
              "cifar_ddn_steps": 1000, "health_steps": 100,
              "adaptive_all_kappas": True},
}

SPEC = ChapterSpec(
    name="jumprelu",
    title="JumpReLU: a retrofit defense, reproduced and attacked adaptively",
    notebook="notebooks/jumprelu.py",
    params=PARAMS,
    profiles=PROFILES,
    check=_check,
)


# ---------------------------------------------------------------------------
# Glue the notebook calls


def pixel_eps(cfg: RunConfig, d: str) -> float:
    """The robust model's FGSM radius in [0, 1] pixels. CIFAR's official eps is in normalized units; an
    L∞ radius on pixels needs one number, so we multiply by the *mean* of the three channel stds."""
    if d == "mnist":
        return cfg.mnist_adv_eps
    std = dataset_info("cifar10").std
    return cfg.cifar_adv_eps_normalized * sum(std) / len(std)


def threat_eps(d: str) -> float:
    """The standard L∞ threat-model radius on [0, 1] pixels (health checks)."""
    return 0.3 if d == "mnist" else 8 / 255


def train_models(cfg: RunConfig, d: str) -> tuple[dict, dict, dict]:
    """Train (or load) the baseline and FGSM-mix models of data set prefix ``d`` on the training split
    minus a random validation hold-out. Returns ``(models, metas, splits)``; ``splits`` has ``val``."""
    from ..data import load_dataset, train_val_split
    from ..defenses.adversarial_training import AdversarialLoss
    from ..models import build_model
    from ..train import TrainConfig, cached_train, cross_entropy, official_milestones

    dataset, arch = DATASET[d], ARCH[d]
    full = load_dataset(dataset, "train").first(cfg[f"{d}_train_size"])
    train_part, val = train_val_split(full, cfg[f"{d}_n_val"], seed=cfg.seed)
    config = TrainConfig(epochs=cfg[f"{d}_epochs"], lr=cfg[f"{d}_lr"], milestones=official_milestones(cfg[f"{d}_epochs"]),
                         augment=d == "cifar" and cfg.cifar_augment, seed=cfg.seed)
    recipe = {"model": arch, "dataset": dataset, "train_size": len(full), "split": "train minus val",
              "n_val": cfg[f"{d}_n_val"], "val_seed": cfg.seed}
    losses = {"baseline": cross_entropy, "robust": AdversarialLoss("fgsm", pixel_eps(cfg, d), mix=cfg[f"{d}_adv_ratio"],
                                                                   replace=True)}
    models, metas = {}, {}
    for kind, loss in losses.items():
        models[kind], metas[kind] = cached_train(recipe, lambda: build_model(arch, dataset), train_part, config,
                                                 loss=loss)
    return models, metas, {"train": train_part, "val": val}


def plot_tradeoff(models_metrics: dict, kappa_choice: dict | None = None):
    """Accuracy vs kappa (clean, IFGSM white/gray) and DeepFool rho vs kappa, one column per model."""
    import matplotlib.pyplot as plt

    keys = list(models_metrics)
    fig, axes = plt.subplots(2, len(keys), figsize=(3.3 * len(keys), 6), squeeze=False)
    for j, key in enumerate(keys):
        rows = models_metrics[key]["kappa"]
        ks = [float(k) for k in rows]
        ax = axes[0, j]
        ax.plot(ks, [r["clean"] for r in rows.values()], "o-", label="clean")
        for setting, ls in (("white_box", "-"), ("gray_box", "--")):
            ax.plot(ks, [r[setting]["ifgsm_acc"] for r in rows.values()], "s" + ls,
                    label=f"IFGSM {setting.replace('_', '-')}")
        if kappa_choice and key in kappa_choice:
            ax.axvline(kappa_choice[key]["kappa"], color="red", lw=1, ls=":", label="chosen κ")
        ax.set(title=key, xlabel="κ", ylim=(-0.02, 1.02), ylabel="accuracy" if j == 0 else None)
        ax.grid(alpha=0.3)
        ax = axes[1, j]
        for norm, marker in (("l2", "o"), ("linf", "^")):
            vals = [r["white_box"].get(f"deepfool_{norm}_rho") for r in rows.values()]
            ax.plot(ks, [float("nan") if v is None or isinstance(v, str) else 100 * v for v in vals],
                    marker + "-", label=f"DeepFool {'L2' if norm == 'l2' else 'L∞'} (white-box)")
        ax.set(xlabel="κ", ylabel="mean relative perturbation ρ (%)" if j == 0 else None)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    axes[1, 0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def kappa_examples(model, kappas, x, y, step: float, steps: int) -> dict:
    """One white-box IFGSM example of ``x[:1]`` per kappa, with the retrofitted model's prediction."""
    from .. import attacks, evaluate
    from ..defenses.jumprelu import retrofit

    out = {}
    for k in kappas:
        net = retrofit(model, k)
        adv = evaluate.run_attack(attacks.ifgsm, net, x[:1], y[:1], 1, step=step, steps=steps)
        out[f"{k:g}"] = {"x_adv": adv[0], "pred_clean": int(evaluate.predict(net, x[:1])[0]),
                         "pred_adv": int(evaluate.predict(net, adv)[0])}
    return out


def kappa_strip(rows: dict, examples: dict, classes, label: int, title: str = ""):
    """Static stand-in for the slider: per kappa, the adversarial example with clean and IFGSM accuracy."""
    import matplotlib.pyplot as plt

    ks = list(rows)
    fig, axes = plt.subplots(1, len(ks), figsize=(1.7 * len(ks), 2.4), squeeze=False)
    for ax, k in zip(axes[0], ks):
        e = examples[k]
        show_image(ax, e["x_adv"])
        ax.set_title(f"κ={k}\nclean {100 * rows[k]['clean']:.0f}% / adv {100 * rows[k]['white_box']['ifgsm_acc']:.0f}%"
                     f"\n{classes[label]}→{classes[e['pred_adv']]}", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def kappa_slider(rows: dict, examples: dict, classes, label: int):
    """An ipywidgets slider over the precomputed kappa grid (works only in a live kernel)."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    ks = list(rows)

    def show(i):
        k = ks[i]
        fig, ax = plt.subplots(figsize=(2.4, 2.6))
        show_image(ax, examples[k]["x_adv"])
        ax.set_title(f"κ = {k}: clean {100 * rows[k]['clean']:.1f}%, IFGSM {100 * rows[k]['white_box']['ifgsm_acc']:.1f}%"
                     f"\n{classes[label]} → {classes[examples[k]['pred_adv']]}", fontsize=7)
        plt.show()

    return widgets.interact(show, i=widgets.IntSlider(min=0, max=len(ks) - 1, value=0, description="κ index"))


def _num(v) -> float:
    return float(v) if not isinstance(v, str) else float("nan")


def verdict(saved: dict) -> str:
    """The chapter's verdict, in markdown, computed from a results file as read back (``load_results``).

    Per model at its chosen kappa (the largest of the grid when validation chose 0): how much of the
    paper-attack gain (white-box IFGSM accuracy over kappa = 0) survives the adaptive worst case at the
    threat radius, which member did the work, the gray-box/white-box gap, and the health checks.
    """
    lines = []
    P, m = saved["parameters"], saved["metrics"]
    fractions, broken = {}, []
    for key, choice in m["kappa_choice"].items():
        d = key.split("_")[0]
        grid = P[f"{d}_kappas"]
        kf = choice["kappa"] if choice["kappa"] > 0 else max(grid)
        k = f"{kf:g}"
        s0, sk = m["models"][key]["kappa"]["0"], m["models"][key]["kappa"][k]
        a0, ak = m["adaptive"][key]["0"], m["adaptive"][key][k]
        threat = min(a0["eps"], key=lambda e: abs(float(e) - threat_eps(d)))  # 0.3 / 8/255
        largest = max(a0["eps"], key=float)
        w0, wk = s0["white_box"]["ifgsm_acc"], sk["white_box"]["ifgsm_acc"]
        gk = sk["gray_box"]["ifgsm_acc"]
        paper_gain = wk - w0
        rho0, rhok = _num(s0["white_box"]["deepfool_l2_rho"]), _num(sk["white_box"]["deepfool_l2_rho"])
        wc0, wck = a0["eps"][threat]["worst_case"], ak["eps"][threat]["worst_case"]
        adaptive_gain = wck - wc0
        failed = [h["check"] for h in saved["health"].get(f"{key} κ={k}", []) if not h["passed"]]
        head = (f"- **{key}**, " + (f"chosen κ = {k}" if choice["kappa"] > 0 else
                                    f"validation chose κ = 0 (no retrofit); the largest κ = {k} stands in")
                + f": clean {pct(sk['clean'])} (κ = 0: {pct(s0['clean'])})"
                + (" — near chance, so any 'robustness' is that of a broken classifier" if sk["clean"] < 0.2 else "")
                + ". ")
        text = (f"Paper's attacks: white-box IFGSM accuracy {pct(w0)} → {pct(wk)} "
                f"({100 * paper_gain:+.1f} points), DeepFool L2 ρ "
                + (f"× {rhok / rho0:.2f}" if rho0 == rho0 and rhok == rhok and rho0 > 0 and rhok != float("inf")
                   else "not comparable")
                + f". Adaptive worst case at ε = {float(threat):.3g} on {ak['n']} images (one image = "
                f"{100 / ak['n']:.1f} points): {pct(wc0)} → {pct(wck)} ({100 * adaptive_gain:+.1f} points). ")
        if sk["clean"] < 0.2:
            # a retrofit that cuts every activation predicts (nearly) one class: "robust" only by being useless
            fractions[key] = None
            broken.append(key)
            text += "Its accuracy under attack is that of a near-constant classifier and is not counted as robustness. "
        elif paper_gain <= 0.01:
            fractions[key] = None
            text += "The paper's own attack shows no gain to test. "
        else:
            frac = max(adaptive_gain, 0.0) / paper_gain
            fractions[key] = frac
            text += (f"So {100 * min(frac, 1):.0f}% of the IFGSM gain survives the adaptive ensemble"
                     + (" — essentially none. " if frac < 0.1 else " — little of it. " if frac < 0.4 else
                        " — part of it. " if frac < 0.75 else ". "))
        # which member did the work at the threat radius
        e = ak["eps"][threat]
        extra = {name: v for name, v in e["extra_fooled"].items() if v}
        text += (f"There, transfer alone leaves {pct(e['transfer'])}, PGD-BPDA alone {pct(e['pgd_bpda'])}"
                 + (", and " + ", ".join(f"{name.replace('pgd_', 'PGD ')} fools {v} more image(s)" for name, v in
                                         extra.items()) if extra else "") + ". ")
        # gray-box vs white-box: a large gray-box advantage that the adaptive attacks erase is masking, not robustness
        gap = gk - wk
        text += (f"Gray-box IFGSM leaves {pct(gk)}, {100 * gap:+.1f} points over white-box"
                 + (f"; that gray-box advantage does not survive (worst case {pct(wck)}): the gray-box "
                    "setting measures how badly κ = 0 examples fit the retrofit, not robustness. "
                    if gap > 0.1 and wck < gk - 0.1 else ". "))
        wcl = ak["eps"][largest]["worst_case"]
        # IFGSM's unprojected steps reach at most iter × step in L∞: compare it with the ensemble at the largest eps
        reach = P[f"{d}_iter"] * P["ifgsm_step"]
        text += (f"The paper's white-box IFGSM (L∞ reach {reach:.2g}) leaves {pct(wk)}; the ensemble at "
                 f"ε = {float(largest):.3g} leaves {pct(wcl)}"
                 + (" — the retrofit's own gradient is a much weaker attack than the ensemble (masked gradient). "
                    if wk - wcl > 0.05 and reach >= float(largest) - 1e-9 else ". "))
        if wcl > 0.2:
            text += (f"At the largest radius ε = {float(largest):.3g} the worst case is still {pct(wcl)}, "
                     "far from zero: the ensemble may not be strong enough there. ")
        text += (f"Caveat — {len(failed)} failed health check(s): {'; '.join(failed)}." if failed
                 else "All health checks passed.")
        lines.append(head + text)
    measured = {k: v for k, v in fractions.items() if v is not None}
    if measured:
        lines.append("\n**Verdict.** Share of the paper-attack (white-box IFGSM) gain that survives the adaptive worst "
                     "case, per model: " + "; ".join(f"{k} {100 * min(v, 1):.0f}%" for k, v in measured.items())
                     + ". " + ("On every model where the paper's attack shows a gain, most of it is gone under adaptive "
                               "attack: JumpReLU's measured robustness comes from attacks that follow its masked "
                               "gradient or transfer from the unmodified model."
                               if max(measured.values()) < 0.5 else
                               "On at least one model a substantial part of the gain survives the adaptive ensemble; "
                               "read it together with that model's health checks, which bound how far it can be "
                               "trusted."))
    else:
        lines.append("\n**Verdict.** At the chosen (or largest) κ the paper's own attack shows no meaningful robustness "
                     "gain on any usable model, so there is no claim left for the adaptive attacks to test at this scale.")
    if broken:
        lines.append(f"Not counted ({', '.join(broken)}): the retrofit's clean accuracy is near chance.")
    lines.append(f"\nScale: profile `{saved['profile']}`, parameters at the top of the page"
                 + (" — smoke-scale numbers only exercise the code and mean nothing." if saved["profile"] == "smoke"
                    else "."))
    return "\n".join(lines)
