"""Text branch (Ψ_txt): caption repair and visual-evidence enrichment, written into the vision sidecars."""
