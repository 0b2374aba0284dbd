; Middles for C. Each capture name is a span kind (see fimtune/corpus/spans.py);
; captures whose name starts with "_" are helpers and never become middles.
; Every syntax kind exists in C.
; "statements" (2-4 consecutive sibling @statement nodes), "empty" (also after a @statement) and the line kinds
; are made by spans.py; kinds not captured here simply have no candidates in this language.

; statement: one statement or declaration (a function definition counts as one).
[
  (expression_statement) (declaration) (return_statement) (break_statement) (continue_statement)
  (goto_statement) (if_statement) (for_statement) (while_statement) (do_statement) (switch_statement)
  (labeled_statement) (function_definition) (type_definition) (preproc_include) (preproc_def)
  (preproc_function_def)
] @statement

; block: what is between the braces of a function, loop, if, struct / union / enum body
; (spans.py trims it to whole lines).
(compound_statement) @block
(field_declaration_list) @block
(enumerator_list) @block

; call_args: inside the parentheses of a call.
(call_expression arguments: (argument_list) @call_args)

; condition: the test of if / while / do-while without its parentheses; the test of a for loop.
(if_statement condition: (parenthesized_expression) @condition)
(while_statement condition: (parenthesized_expression) @condition)
(do_statement condition: (parenthesized_expression) @condition)
(for_statement condition: (_) @condition)

; assignment_rhs: an initialiser or the right-hand side of an assignment.
(init_declarator value: (_) @assignment_rhs)
(assignment_expression right: (_) @assignment_rhs)
