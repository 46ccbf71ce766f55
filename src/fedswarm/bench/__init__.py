"""Benchmarks, on top of every layer: ``fedswarm bench p2p|storage|ledger|learning|job|all``.

One module per benchmark, each with ``main(args) -> int`` (``args.json``, ``args.quick``,
``args.workdir``): :mod:`.p2p`, :mod:`.storage`, :mod:`.ledger` (with :mod:`.audit`),
:mod:`.learning` (with :mod:`.strategies`), :mod:`.job` (real jobs on a devnet) and :mod:`.all`
(fedswarm side by side with Flower: :mod:`.flower`, :mod:`.procs`, :mod:`.report`). The Flower app
template and its simulation driver (``flower_files/``) are package data run by the Flower
virtualenv, never imported here. Nothing is imported eagerly: the CLI loads one module.
"""
