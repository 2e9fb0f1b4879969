"""Shipping: the guard that picks which model ships (:mod:`.guard`) and the shipped file itself (:mod:`.package`)."""
