"""`rn50 data check`: find the files of a dataset that training cannot read or would convert,
and duplicates; write a skip list or a fixed copy.

- scan: decode every file (in parallel processes) and classify it: check_file, check_dataset;
- report: what a check found (FileReport, DatasetReport), progress while it runs, the text
  report and the JSON file;
- fix: a copy of the dataset that checks clean (--fix-to);
- the skip list that --skip-list writes and training reads is rn50.data.skiplist, outside this
  package, so that training does not import the checker.
"""
