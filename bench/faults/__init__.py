"""The fault suite: the server on loopback under fuzzing, kills, stalls, floods, unread replies, idle connections,
slow clients, a link outage and a soak, with a good client checking every answer (issue 15).

``python -m bench.faults [--short] [--out bench/results/faults.json] [--only NAME ...]`` runs it and prints a table
of the figures that must hold; ``python -m bench.faults --write-md`` regenerates RELIABILITY.md from the JSON.
Modules: :mod:`.figures` (results and bounds, pure), :mod:`.server` (the server process and its sampler),
:mod:`.good` (the good client), :mod:`.worker` (misbehaving clients, run as processes), :mod:`.stall` (a backend
that stalls), :mod:`.atheris_decode` (the codec under atheris), :mod:`.scenarios`, :mod:`.report`, :mod:`.cli`.
"""
