"""stamp-st: STAMP (Han et al., ICLR 2026) — pathology image representations supervised by spatial transcriptomics.

Top-level imports stay lazy so that ``import stamp_st`` and the CLI start fast; import the submodule you need:
``stamp_st.readers`` (data in), ``stamp_st.preprocessing`` (tokens, crops, groups), ``stamp_st.corpus`` (shards),
``stamp_st.models``, ``stamp_st.training``, ``stamp_st.evaluation``.
"""

__version__ = "0.1.0"
