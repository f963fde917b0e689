"""What evaluation measures: estimators, sample and transfer quality, the report."""
