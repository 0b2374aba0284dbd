; Middles for Go. Each capture name is a span kind (see fimtune/corpus/spans.py);
; captures whose name starts with "_" are helpers and never become middles.
; Every syntax kind exists in Go; conditions have no parentheses in Go.
; "statements" (2-4 consecutive sibling @statement nodes), "empty" (also after a @statement) and the line kinds
; are made by spans.py; kinds not captured here simply have no candidates in this language.

; statement: one statement or top-level declaration (a flat alternation: nesting it under a parent
; pattern makes the query several times slower). The short statement of an `if x := f(); x > 0`
; header is captured too.
[
  (expression_statement) (send_statement) (inc_statement) (dec_statement) (assignment_statement)
  (short_var_declaration) (var_declaration) (const_declaration) (type_declaration) (return_statement)
  (go_statement) (defer_statement) (if_statement) (for_statement) (expression_switch_statement)
  (type_switch_statement) (select_statement) (labeled_statement) (break_statement) (continue_statement)
  (goto_statement) (fallthrough_statement) (function_declaration) (method_declaration) (import_declaration)
] @statement

; block: what is between the braces of a function, if, for, or a struct / interface body
; (spans.py trims it to whole lines).
(block) @block
(field_declaration_list) @block

; call_args: inside the parentheses of a call.
(call_expression arguments: (argument_list) @call_args)

; condition: the test of an if or of a three-clause / condition-only for loop.
(if_statement condition: (_) @condition)
(for_clause condition: (_) @condition)
(for_statement (_expression) @condition)

; assignment_rhs: the values of `=`, `:=`, `var` and `const`.
(assignment_statement right: (_) @assignment_rhs)
(short_var_declaration right: (_) @assignment_rhs)
(var_spec value: (_) @assignment_rhs)
(const_spec value: (_) @assignment_rhs)
