<?php
// Application data: each task carries a value of ours (addTask's third argument), handed
// back to the callbacks with the task, so the completion knows which request it answers.
declare(strict_types=1);
require __DIR__ . '/servers.php';

$client = new GearmanClient();
$client->addServers(gearman_servers());

$client->setCompleteCallback(function (GearmanTask $task, mixed $request): void {
    echo 'COMPLETE: ', $task->unique(), ', ', $task->data(), ', app data: ',
         $request['label'], "\n";
});

$requests = ['1' => ['text' => 'Hello World!', 'label' => 'x'],
             '2' => ['text' => '!dlroW olleH', 'label' => 'y']];
foreach ($requests as $unique => $request) {
    $client->addTask('reverse', $request['text'], $request, (string)$unique);
}
if (!$client->runTasks()) {
    echo 'Error: ', $client->error(), "\n";
    exit(1);
}
echo "DONE\n";
