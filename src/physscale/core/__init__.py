"""The ground floor: pure functions of tensors and numbers.

Nothing here imports a record, a file, a host code or the command line;
every module above builds on these.
"""
