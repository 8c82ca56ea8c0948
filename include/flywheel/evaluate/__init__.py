"""Stage 5, evaluate: a model answers the evaluation split, its answers are parsed and scored.

One module per job: :mod:`~flywheel.evaluate.examples` (what is evaluated),
:mod:`~flywheel.evaluate.local` and :mod:`~flywheel.evaluate.endpoint` (who answers),
:mod:`~flywheel.evaluate.icl` (few-shot prompts), :mod:`~flywheel.evaluate.parsing` (answers back
to tool calls), :mod:`~flywheel.evaluate.judge` (an optional LLM judge),
:mod:`~flywheel.evaluate.stats` (intervals) and :mod:`~flywheel.evaluate.runner` (the
``flywheel evaluate`` job that ties them together and writes the outputs).
"""
