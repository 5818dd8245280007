"""attnmoe.integrations: the attention variants inside other libraries' models.

* :mod:`attnmoe.integrations.transformers` -- its ``swap_attention`` puts an
  :class:`~attnmoe.attention.Attention` variant into a Hugging Face ``transformers`` causal LM
  (Llama, Mistral, Qwen2, Qwen3, GPT-2 families) in place.  Needs the ``hf`` extra
  (``pip install 'attnmoe[hf]'``); importing this package does not import ``transformers``.
"""
