"""The command-line programs (``python -m nptransformer <command>``), above the library they drive.

- :mod:`.cli`: the parser; :mod:`.defaults`: every command's defaults.
- :mod:`.demo` (``demo``), :mod:`.train_char` (``train-char``), :mod:`.bench`
  (``bench``, with :mod:`.bench_torch`), :mod:`.gradcheck` (``gradcheck``),
  :mod:`.embed` (``embed``).
"""
