"""``python -m farlab.teachers.generate <the train overrides> [generate.*]``: write the teacher's generations for
the task's training prompts (sequence-level KD; :mod:`farlab.teachers.generations`).

The command wires config, data and the teacher strategy (which may fine-tune an SFT teacher through the trainer),
so it lives in the application layer (:mod:`farlab.cli.generate`); this module only hands the command over by name.
"""

if __name__ == "__main__":
    import runpy

    runpy.run_module("farlab.cli.generate", run_name="__main__")
