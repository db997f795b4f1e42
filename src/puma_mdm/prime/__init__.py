"""MDM-Prime: partial masking of tokens written as ℓ base-b digits (docs/algorithms.md §6).

encoding.py the codec and the carry-over filter · model.py the digit-embedding Transformer ·
process.py digit-wise random masking and PUMA · loss.py the joint and digit-marginal forms ·
sampling.py digit-by-digit decoding with idle steps · evaluate.py what to report."""
