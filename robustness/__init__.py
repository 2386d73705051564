"""robustness: the library behind the adversarial-robustness book.

Modules, in import order: ``data`` → ``models`` → ``train`` → ``attacks`` /
``defenses`` → ``evaluate`` → ``results``; ``config`` validates chapter
parameters and ``runner`` executes the notebooks.
"""
__version__ = "0.1.0"
