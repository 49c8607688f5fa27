"""Shared test helpers, imported as ``tests.helpers.<module>`` (the repository root is on ``sys.path``:
pytest's ``pythonpath = .``, and :func:`tests.helpers.launch.script_env` for launched scripts).

- ``models``: tiny fusion models, ViLT, processors, batches, images and easy-VQA-like raw examples.
- ``distillation`` / ``msd`` / ``byom`` / ``data``: fixtures of the trainer, MSD, bring-your-own-model and
  data tests (tiny BERTs, token data sets, hand-written modality inputs, a tiny processor).
- ``launch``: the environment and command that run a script of ``scripts/`` in fresh processes.
- ``hub_server``: a local stand-in for the Hugging Face Hub.
- ``scripts/``: the programs the multi-process, DeepSpeed, resume and cache tests launch.
"""
