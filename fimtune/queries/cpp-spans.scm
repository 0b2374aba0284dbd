; Middles for C++. Each capture name is a span kind (see fimtune/corpus/spans.py);
; captures whose name starts with "_" are helpers and never become middles.
; Every syntax kind exists in C++.
; "statements" (2-4 consecutive sibling @statement nodes), "empty" (also after a @statement) and the line kinds
; are made by spans.py; kinds not captured here simply have no candidates in this language.

; statement: one statement, declaration or class member (a function definition counts as one).
[
  (expression_statement) (declaration) (return_statement) (break_statement) (continue_statement)
  (goto_statement) (if_statement) (for_statement) (for_range_loop) (while_statement) (do_statement)
  (switch_statement) (try_statement) (throw_statement) (co_return_statement) (labeled_statement)
  (function_definition) (type_definition) (alias_declaration) (using_declaration) (template_declaration)
  (namespace_definition) (field_declaration) (static_assert_declaration) (preproc_include) (preproc_def)
  (preproc_function_def)
] @statement

; block: what is between the braces of a function, loop, if, class / struct / enum body or namespace
; (spans.py trims it to whole lines).
(compound_statement) @block
(field_declaration_list) @block
(declaration_list) @block
(enumerator_list) @block

; call_args: inside the parentheses of a call or a `new`.
(call_expression arguments: (argument_list) @call_args)
(new_expression arguments: (argument_list) @call_args)

; condition: the test of if / while without its parentheses, do-while's test, a for loop's test.
(if_statement condition: (condition_clause) @condition)
(while_statement condition: (condition_clause) @condition)
(do_statement condition: (parenthesized_expression) @condition)
(for_statement condition: (_) @condition)

; assignment_rhs: an initialiser (`= value` or a brace list), a member default, an assignment's right-hand side.
(init_declarator value: (_) @assignment_rhs)
(field_declaration default_value: (_) @assignment_rhs)
(assignment_expression right: (_) @assignment_rhs)
