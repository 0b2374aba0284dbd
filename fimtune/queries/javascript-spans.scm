; Middles for JavaScript (and JSX). Each capture name is a span kind (see fimtune/corpus/spans.py);
; captures whose name starts with "_" are helpers and never become middles.
; Every syntax kind exists in JavaScript.
; "statements" (2-4 consecutive sibling @statement nodes), "empty" (also after a @statement) and the line kinds
; are made by spans.py; kinds not captured here simply have no candidates in this language.

; statement: one statement or declaration.
[
  (expression_statement) (return_statement) (throw_statement) (break_statement) (continue_statement)
  (debugger_statement) (lexical_declaration) (variable_declaration) (import_statement) (export_statement)
  (if_statement) (for_statement) (for_in_statement) (while_statement) (do_statement) (try_statement)
  (switch_statement) (labeled_statement) (function_declaration) (generator_function_declaration)
  (class_declaration)
] @statement

; block: what is between the braces of a function, loop, if or class body (spans.py trims it to whole lines).
(statement_block) @block
(class_body) @block
(switch_body) @block

; call_args: inside the parentheses of a call or a `new`.
(call_expression arguments: (arguments) @call_args)
(new_expression arguments: (arguments) @call_args)

; condition: the test of if / while / do-while, without its parentheses; the test of a for loop.
(if_statement condition: (parenthesized_expression) @condition)
(while_statement condition: (parenthesized_expression) @condition)
(do_statement condition: (parenthesized_expression) @condition)
(for_statement condition: [(expression) (sequence_expression)] @condition)

; assignment_rhs: an initialiser or the right-hand side of an assignment.
(variable_declarator value: (_) @assignment_rhs)
(assignment_expression right: (_) @assignment_rhs)
(augmented_assignment_expression right: (_) @assignment_rhs)
(field_definition value: (_) @assignment_rhs)
