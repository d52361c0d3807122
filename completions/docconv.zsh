#compdef docconv

_docconv_completion() {
  eval $(env _TYPER_COMPLETE_ARGS="${words[1,$CURRENT]}" _DOCCONV_COMPLETE=complete_zsh docconv)
}

compdef _docconv_completion docconv
