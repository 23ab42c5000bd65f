"""HL7 v2 on the receive path: framing, tokenizing, charsets, validation and ACKs."""
