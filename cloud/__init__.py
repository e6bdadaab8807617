"""The training companion and fleet back end. Heavy imports (torch) stay inside functions."""
