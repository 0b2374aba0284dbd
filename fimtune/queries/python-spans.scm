; Middles for Python. Each capture name is a span kind (see fimtune/corpus/spans.py);
; captures whose name starts with "_" are helpers and never become middles.
; Every syntax kind exists in Python.
; "statements" (2-4 consecutive sibling @statement nodes), "empty" (also after a @statement) and the line kinds
; are made by spans.py; kinds not captured here simply have no candidates in this language.

; statement: one statement (a decorated def also yields the def without its decorators). A flat alternation:
; the same list nested under (block ...) makes the query about ten times slower.
[
  (expression_statement) (return_statement) (pass_statement) (break_statement) (continue_statement)
  (raise_statement) (assert_statement) (delete_statement) (global_statement) (nonlocal_statement)
  (import_statement) (import_from_statement) (future_import_statement) (type_alias_statement)
  (if_statement) (for_statement) (while_statement) (try_statement) (with_statement) (match_statement)
  (function_definition) (class_definition) (decorated_definition)
] @statement

; block: the indented body of a def, class, if, loop, with, try, match case.
(block) @block

; call_args: the argument list of a call (the parentheses are left out by spans.py).
(call arguments: (argument_list) @call_args)

; condition: the test of if / elif / while (parentheses around it are left out by spans.py).
(if_statement condition: (_) @condition)
(elif_clause condition: (_) @condition)
(while_statement condition: (_) @condition)

; assignment_rhs: the value of an assignment (annotated or not) or of an augmented assignment.
(assignment right: (_) @assignment_rhs)
(augmented_assignment right: (_) @assignment_rhs)
