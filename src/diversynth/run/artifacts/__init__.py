"""What the run directory holds between stages, typed and read or written in one place:
every stage folder reads the artifacts of earlier stages through here, never through the
stage that wrote them."""
