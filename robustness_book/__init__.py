"""robustness: the library behind the adversarial-robustness book.

Layers, bottom to top; a module imports only its own layer and those below it (``tests/test_layout.py``):
``data`` → ``models`` → ``attacks`` → ``train`` → ``defenses`` → ``evaluate`` (never imports a defense) →
``config`` / ``results`` → ``chapters`` → ``cli`` / ``runner`` / ``bench``, which run the chapter notebooks.
``_io``, ``_torchvision``, ``runtime``, ``report`` and ``timing`` are utilities every layer may use.
"""
__version__ = "0.1.0"
