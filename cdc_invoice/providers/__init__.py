"""E-invoice platforms behind one small async protocol (see base.Provider)."""
