"""The evaluation stage: a model answers the evaluation split, its answers are parsed and scored.

One module per job: :mod:`~flywheel.evaluation.examples` (what is evaluated),
:mod:`~flywheel.evaluation.local` and :mod:`~flywheel.evaluation.endpoint` (who answers),
:mod:`~flywheel.evaluation.icl` (few-shot prompts), :mod:`~flywheel.evaluation.parsing` (answers back
to tool calls), :mod:`~flywheel.evaluation.judge` (an optional LLM judge),
:mod:`~flywheel.evaluation.stats` (intervals) and :mod:`~flywheel.evaluation.runner` (the
``flywheel evaluate`` job that ties them together and writes the outputs).
"""
