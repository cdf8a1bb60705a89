"""One evaluation of a trained adapter (or of the base model alone): its plan (plan.EvaluationPlan), greedy batched
generation (generate), ranking the labels with a shared prompt (rank), scoring (score) and the run that ties them
(run)."""
