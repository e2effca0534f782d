"""Each command's body, one module per command, named after it: `run(cfg)` does what `python <command>.py` does.

A command is built the same way everywhere: its entry point `<command>.py` at the repository root (a thin
`@hydra.main`), its config `conf/<command>.yaml`, its body `hgmldl.commands.<command>.run`, and its Python call in
hgmldl.api (`hgmldl.fit` for train, after Keras' `fit`; `hgmldl.<command>` for the others).
"""
