"""trustequiv: is a compressed transformer trust-equivalent to the large one it replaces?"""

__version__ = "0.1.0"
