"""Readers and writers for RELION, cryoSPARC, MRC and atomic-model files."""
