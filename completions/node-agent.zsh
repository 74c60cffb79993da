#compdef node-agent

autoload -U is-at-least

_node-agent() {
    typeset -A opt_args
    typeset -a _arguments_options
    local ret=1

    if is-at-least 5.2; then
        _arguments_options=(-s -S -C)
    else
        _arguments_options=(-s -C)
    fi

    local context curcontext="$curcontext" state line
    _arguments "${_arguments_options[@]}" : \
'--config=[Configuration file (TOML)]:CONFIG:_files' \
'-h[Print help]' \
'--help[Print help]' \
'-V[Print version]' \
'--version[Print version]' \
":: :_node-agent_commands" \
"*::: :->node-agent" \
&& ret=0
    case $state in
    (node-agent)
        words=($line[1] "${words[@]}")
        (( CURRENT += 1 ))
        curcontext="${curcontext%:*:*}:node-agent-command-$line[1]:"
        case $line[1] in
            (check-config)
_arguments "${_arguments_options[@]}" : \
'--config=[Configuration file (TOML)]:CONFIG:_files' \
'-h[Print help]' \
'--help[Print help]' \
&& ret=0
;;
(token)
_arguments "${_arguments_options[@]}" : \
'--config=[Configuration file (TOML)]:CONFIG:_files' \
'-h[Print help]' \
'--help[Print help]' \
":: :_node-agent__subcmd__token_commands" \
"*::: :->token" \
&& ret=0

    case $state in
    (token)
        words=($line[1] "${words[@]}")
        (( CURRENT += 1 ))
        curcontext="${curcontext%:*:*}:node-agent-token-command-$line[1]:"
        case $line[1] in
            (new)
_arguments "${_arguments_options[@]}" : \
'--name=[The token'\''s name, of its own in the tokens file (\`token list\` and the logs show it)]:NAME:_default' \
'--role=[What the token may do\: operator (every app, and the node) or user (the apps that --user-id owns or may act on through a team)]:ROLE:(operator user)' \
'--user-id=[The user this token acts for (role user only)]:USER_ID:_default' \
'--config=[Configuration file (TOML)]:CONFIG:_files' \
'-h[Print help]' \
'--help[Print help]' \
&& ret=0
;;
(list)
_arguments "${_arguments_options[@]}" : \
'--config=[Configuration file (TOML)]:CONFIG:_files' \
'-h[Print help]' \
'--help[Print help]' \
&& ret=0
;;
(help)
_arguments "${_arguments_options[@]}" : \
":: :_node-agent__subcmd__token__subcmd__help_commands" \
"*::: :->help" \
&& ret=0

    case $state in
    (help)
        words=($line[1] "${words[@]}")
        (( CURRENT += 1 ))
        curcontext="${curcontext%:*:*}:node-agent-token-help-command-$line[1]:"
        case $line[1] in
            (new)
_arguments "${_arguments_options[@]}" : \
&& ret=0
;;
(list)
_arguments "${_arguments_options[@]}" : \
&& ret=0
;;
(help)
_arguments "${_arguments_options[@]}" : \
&& ret=0
;;
        esac
    ;;
esac
;;
        esac
    ;;
esac
;;
(help)
_arguments "${_arguments_options[@]}" : \
":: :_node-agent__subcmd__help_commands" \
"*::: :->help" \
&& ret=0

    case $state in
    (help)
        words=($line[1] "${words[@]}")
        (( CURRENT += 1 ))
        curcontext="${curcontext%:*:*}:node-agent-help-command-$line[1]:"
        case $line[1] in
            (check-config)
_arguments "${_arguments_options[@]}" : \
&& ret=0
;;
(token)
_arguments "${_arguments_options[@]}" : \
":: :_node-agent__subcmd__help__subcmd__token_commands" \
"*::: :->token" \
&& ret=0

    case $state in
    (token)
        words=($line[1] "${words[@]}")
        (( CURRENT += 1 ))
        curcontext="${curcontext%:*:*}:node-agent-help-token-command-$line[1]:"
        case $line[1] in
            (new)
_arguments "${_arguments_options[@]}" : \
&& ret=0
;;
(list)
_arguments "${_arguments_options[@]}" : \
&& ret=0
;;
        esac
    ;;
esac
;;
(help)
_arguments "${_arguments_options[@]}" : \
&& ret=0
;;
        esac
    ;;
esac
;;
        esac
    ;;
esac
}

(( $+functions[_node-agent_commands] )) ||
_node-agent_commands() {
    local commands; commands=(
'check-config:Validate the configuration and exit 0, or 78 naming the bad key or value' \
'token:Manage tokens' \
'help:Print this message or the help of the given subcommand(s)' \
    )
    _describe -t commands 'node-agent commands' commands "$@"
}
(( $+functions[_node-agent__subcmd__check-config_commands] )) ||
_node-agent__subcmd__check-config_commands() {
    local commands; commands=()
    _describe -t commands 'node-agent check-config commands' commands "$@"
}
(( $+functions[_node-agent__subcmd__help_commands] )) ||
_node-agent__subcmd__help_commands() {
    local commands; commands=(
'check-config:Validate the configuration and exit 0, or 78 naming the bad key or value' \
'token:Manage tokens' \
'help:Print this message or the help of the given subcommand(s)' \
    )
    _describe -t commands 'node-agent help commands' commands "$@"
}
(( $+functions[_node-agent__subcmd__help__subcmd__check-config_commands] )) ||
_node-agent__subcmd__help__subcmd__check-config_commands() {
    local commands; commands=()
    _describe -t commands 'node-agent help check-config commands' commands "$@"
}
(( $+functions[_node-agent__subcmd__help__subcmd__help_commands] )) ||
_node-agent__subcmd__help__subcmd__help_commands() {
    local commands; commands=()
    _describe -t commands 'node-agent help help commands' commands "$@"
}
(( $+functions[_node-agent__subcmd__help__subcmd__token_commands] )) ||
_node-agent__subcmd__help__subcmd__token_commands() {
    local commands; commands=(
'new:Print a fresh random token once, and the tokens-file entry holding its hash' \
'list:Show the names and roles in the configuration'\''s tokens file (never the hashes)' \
    )
    _describe -t commands 'node-agent help token commands' commands "$@"
}
(( $+functions[_node-agent__subcmd__help__subcmd__token__subcmd__list_commands] )) ||
_node-agent__subcmd__help__subcmd__token__subcmd__list_commands() {
    local commands; commands=()
    _describe -t commands 'node-agent help token list commands' commands "$@"
}
(( $+functions[_node-agent__subcmd__help__subcmd__token__subcmd__new_commands] )) ||
_node-agent__subcmd__help__subcmd__token__subcmd__new_commands() {
    local commands; commands=()
    _describe -t commands 'node-agent help token new commands' commands "$@"
}
(( $+functions[_node-agent__subcmd__token_commands] )) ||
_node-agent__subcmd__token_commands() {
    local commands; commands=(
'new:Print a fresh random token once, and the tokens-file entry holding its hash' \
'list:Show the names and roles in the configuration'\''s tokens file (never the hashes)' \
'help:Print this message or the help of the given subcommand(s)' \
    )
    _describe -t commands 'node-agent token commands' commands "$@"
}
(( $+functions[_node-agent__subcmd__token__subcmd__help_commands] )) ||
_node-agent__subcmd__token__subcmd__help_commands() {
    local commands; commands=(
'new:Print a fresh random token once, and the tokens-file entry holding its hash' \
'list:Show the names and roles in the configuration'\''s tokens file (never the hashes)' \
'help:Print this message or the help of the given subcommand(s)' \
    )
    _describe -t commands 'node-agent token help commands' commands "$@"
}
(( $+functions[_node-agent__subcmd__token__subcmd__help__subcmd__help_commands] )) ||
_node-agent__subcmd__token__subcmd__help__subcmd__help_commands() {
    local commands; commands=()
    _describe -t commands 'node-agent token help help commands' commands "$@"
}
(( $+functions[_node-agent__subcmd__token__subcmd__help__subcmd__list_commands] )) ||
_node-agent__subcmd__token__subcmd__help__subcmd__list_commands() {
    local commands; commands=()
    _describe -t commands 'node-agent token help list commands' commands "$@"
}
(( $+functions[_node-agent__subcmd__token__subcmd__help__subcmd__new_commands] )) ||
_node-agent__subcmd__token__subcmd__help__subcmd__new_commands() {
    local commands; commands=()
    _describe -t commands 'node-agent token help new commands' commands "$@"
}
(( $+functions[_node-agent__subcmd__token__subcmd__list_commands] )) ||
_node-agent__subcmd__token__subcmd__list_commands() {
    local commands; commands=()
    _describe -t commands 'node-agent token list commands' commands "$@"
}
(( $+functions[_node-agent__subcmd__token__subcmd__new_commands] )) ||
_node-agent__subcmd__token__subcmd__new_commands() {
    local commands; commands=()
    _describe -t commands 'node-agent token new commands' commands "$@"
}

if [ "$funcstack[1]" = "_node-agent" ]; then
    _node-agent "$@"
else
    compdef _node-agent node-agent
fi
