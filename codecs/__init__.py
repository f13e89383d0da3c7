# CompressAI's package __init__ imports its point-cloud datasets (torch_geometric): seconds no codec needs.
from latentzip.codecs.compressai_imports import install as _install_compressai

_install_compressai()
