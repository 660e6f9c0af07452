"""The inspection station: what a model on a line decided and when (`log`), whether the
line still looks like the one it was calibrated on (`drift`), and the parts an operator
confirmed, as a dataset to train on again (`review`). numpy, PIL and the standard
library only: a station runs beside an exported model without torch."""
