"""`rn50 data check`: find the files of a dataset that training cannot read or would convert,
and duplicates; write a skip list or a fixed copy."""
